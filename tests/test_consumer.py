"""Behaviour of the queue consumers (`Consumer` on threads, `AsyncConsumer` on tasks).

Behaviour through an App runs under both runners (the `drive` fixture) and
both consumer flavours (`flavour`): sync `Consumer` over a stdlib
`queue.Queue`, `AsyncConsumer` over an `asyncio.Queue`. Handlers hold on
gates the test opens, never on sleeps; every wait is bounded (`BOUND`). The
few tests about real time (a stop deadline) use small real timeouts and
assert generous bounds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lifecycle
from lifecycle import App, CancelSource, CancelToken, DeadlineExceeded, ExitCode, current_token
from lifecycle._core.threads import helper_thread
from lifecycle._workers import consumer as consumer_module
from lifecycle._workers import dedupe as dedupe_module
from lifecycle._workers.consumer import (
    AsyncConsumer,
    AsyncMessageSource,
    AsyncQueueSource,
    Consumer,
    Message,
    MessageSource,
    QueueSource,
)
from lifecycle._workers.dedupe import MemoryDedupe
from tests.drive import Drive

BOUND = 10.0
"""Seconds: the most any wait here may take before the test fails (a hang detector)."""

ROOT = Path(__file__).resolve().parent.parent
FLAVOURS = ["sync", "async"]


def wait_until(predicate: Callable[[], bool], timeout: float = BOUND) -> None:
    """Poll ``predicate`` (state another thread writes) until true, bounded."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.001)


# -- handlers that hold on gates ----------------------------------------------------------


class Handler:
    """A handler of both flavours: records what runs, holds on ``gate``, fails on demand.

    ``hold(m)``: wait for ``gate`` before returning. ``fail(m)``: raise
    ``RuntimeError`` (after holding). ``honour``: while holding, end with
    `Cancelled` once ``current_token()`` is cancelled. Every hold is bounded.
    """

    def __init__(
        self,
        *,
        hold: Callable[[Message], bool] = lambda m: False,
        fail: Callable[[Message], bool] = lambda m: False,
        honour: bool = False,
    ) -> None:
        self.hold, self.fail, self.honour = hold, fail, honour
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.started: list[str] = []
        self.done: list[str] = []  # returned normally
        self.tokens: dict[str, CancelToken] = {}
        self.running = 0
        self.peak = 0
        self.__name__ = "handle"

    def _enter(self, m: Message) -> CancelToken:
        token = current_token()
        with self.lock:
            self.started.append(m.id)
            self.tokens[m.id] = token
            self.running += 1
            self.peak = max(self.peak, self.running)
        return token

    def _leave(self, m: Message, ok: bool) -> None:
        with self.lock:
            self.running -= 1
            if ok:
                self.done.append(m.id)

    def _check(self, m: Message) -> None:
        if self.fail(m):
            raise RuntimeError(f"handler failed on {m.id}")

    def __call__(self, m: Message) -> None:
        token = self._enter(m)
        ok = False
        try:
            if self.hold(m):
                end = time.monotonic() + BOUND
                while not self.gate.wait(0.005):
                    if self.honour:
                        token.raise_if_cancelled()
                    assert time.monotonic() < end, "the gate never opened"
            self._check(m)
            ok = True
        finally:
            self._leave(m, ok)

    async def run_async(self, m: Message) -> None:
        token = self._enter(m)
        ok = False
        try:
            if self.hold(m):
                end = time.monotonic() + BOUND
                while not self.gate.is_set():
                    if self.honour:
                        token.raise_if_cancelled()
                    assert time.monotonic() < end, "the gate never opened"
                    await asyncio.sleep(0.002)
            self._check(m)
            ok = True
        finally:
            self._leave(m, ok)


# -- sources that record what the consumer did, over the real queues -----------------------


class Recording:
    """What a consumer acked and gave back, by id (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: list[str] = []
        self.given_back: list[str] = []
        self.fetches = 0

    def record(self, what: list[str], messages: Sequence[Message]) -> None:
        with self.lock:
            what.extend(m.id for m in messages)


class RecordingSource(Recording):
    """A `QueueSource` that records; ``fetch_errors`` first fetches raise."""

    def __init__(self, q: queue.Queue[Any], fetch_errors: int = 0) -> None:
        super().__init__()
        self.inner = QueueSource(q)
        self.fetch_errors = fetch_errors

    def fetch(self, limit: int, token: CancelToken) -> Sequence[Message]:
        with self.lock:
            self.fetches += 1
            fail = self.fetches <= self.fetch_errors
        if fail:
            raise ConnectionError(f"broker unreachable (fetch {self.fetches})")
        return self.inner.fetch(limit, token)

    def ack(self, messages: Sequence[Message]) -> None:
        self.record(self.acked, messages)
        self.inner.ack(messages)

    def give_back(self, messages: Sequence[Message]) -> None:
        self.record(self.given_back, messages)
        self.inner.give_back(messages)


class AsyncRecordingSource(Recording):
    """The `AsyncQueueSource` twin of `RecordingSource`."""

    def __init__(self, q: asyncio.Queue[Any], fetch_errors: int = 0) -> None:
        super().__init__()
        self.inner = AsyncQueueSource(q)
        self.fetch_errors = fetch_errors

    async def fetch(self, limit: int, token: CancelToken) -> Sequence[Message]:
        with self.lock:
            self.fetches += 1
            fail = self.fetches <= self.fetch_errors
        if fail:
            raise ConnectionError(f"broker unreachable (fetch {self.fetches})")
        return await self.inner.fetch(limit, token)

    async def ack(self, messages: Sequence[Message]) -> None:
        self.record(self.acked, messages)
        await self.inner.ack(messages)

    async def give_back(self, messages: Sequence[Message]) -> None:
        self.record(self.given_back, messages)
        await self.inner.give_back(messages)


class Setup:
    """A consumer of one flavour over a real queue holding messages ``"0"`` .. ``"n-1"``."""

    def __init__(
        self, flavour: str, n: int, handler: Handler, *, fetch_errors: int = 0, **kwargs: Any
    ) -> None:
        self.flavour = flavour
        self.ids = [str(i) for i in range(n)]
        self.handler = handler
        self.consumer: Consumer | AsyncConsumer
        self.source: RecordingSource | AsyncRecordingSource
        if flavour == "sync":
            self.q: queue.Queue[Any] | asyncio.Queue[Any] = queue.Queue()
            self.source = RecordingSource(self.q, fetch_errors)
            self.consumer = Consumer(self.source, handler, **kwargs)
        else:
            self.q = asyncio.Queue()
            self.source = AsyncRecordingSource(self.q, fetch_errors)
            self.consumer = AsyncConsumer(self.source, handler.run_async, **kwargs)
        for i in self.ids:
            self.q.put_nowait(Message(i, {"n": int(i)}))

    def remaining(self) -> list[str]:
        """The ids still in the queue (read once the consumer has stopped)."""
        out: list[str] = []
        while True:
            try:
                item = self.q.get_nowait()
            except (queue.Empty, asyncio.QueueEmpty):
                return out
            out.append(item.id)

    def assert_nothing_lost(self) -> None:
        """Every message was handled exactly once and acked, or is still in the queue."""
        left = self.remaining()
        done = self.handler.done
        assert len(done) == len(set(done)), f"handled twice: {done}"
        assert sorted(self.source.acked) == sorted(done)
        assert sorted(done + left, key=int) == self.ids
        assert set(done).isdisjoint(left)


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    """The consumer under test: ``sync`` (threads) or ``async`` (tasks)."""
    return str(request.param)


def app_with(setup: Setup, **kwargs: Any) -> App:
    kwargs.setdefault("stop_timeout", 5.0)
    kwargs.setdefault("shutdown_timeout", 8.0)
    app = App("consumers", **kwargs)
    app.add(setup.consumer, name="orders")
    return app


def events(log: list[Any], name: str) -> list[Any]:
    return [e for e in log if e.get("event") == name]


# -- the stop sequence, through an App, both runners, both flavours -----------------------


def test_every_message_is_handled_once_and_acked(drive: Drive, flavour: str) -> None:
    """A consumer handles each message once, acks it, and the stop returns OK."""
    setup = Setup(flavour, 30, Handler(), concurrency=4)
    drive.start(app_with(setup))
    wait_until(lambda: setup.consumer.stats().acked == 30)
    assert drive.stop() == ExitCode.OK
    assert sorted(setup.handler.done, key=int) == setup.ids
    setup.assert_nothing_lost()
    stats = setup.consumer.stats()
    assert (stats.handled, stats.acked, stats.given_back, stats.failed) == (30, 30, 0, 0)
    assert (stats.in_flight, stats.buffered) == (0, 0)


def test_in_flight_finish_and_are_acked_fetched_not_started_given_back(
    drive: Drive, flavour: str
) -> None:
    """At the stop: fetching stops, the prefetched are given back at once, in-flight acked."""
    handler = Handler(hold=lambda m: m.id == "0")
    setup = Setup(flavour, 10, handler, concurrency=1, prefetch=3)
    drive.start(app_with(setup))
    wait_until(lambda: handler.started == ["0"] and setup.consumer.stats().buffered == 3)
    stopping = drive._submit(lambda: drive.runner.stop("test"))  # type: ignore[union-attr]
    # Given back while the handler still runs: another consumer gets them now.
    wait_until(lambda: sorted(setup.source.given_back) == ["1", "2", "3"])
    assert handler.done == []
    with pytest.raises(concurrent.futures.TimeoutError):
        stopping.result(0.3)  # the stop waits for the handler in flight
    handler.gate.set()
    assert stopping.result(BOUND) == ExitCode.OK
    assert setup.source.acked == ["0"]
    stats = setup.consumer.stats()
    assert (stats.fetched, stats.acked, stats.given_back, stats.buffered) == (4, 1, 3, 0)
    setup.assert_nothing_lost()


def test_a_stuck_handler_is_cut_named_given_back_exit_timeout(
    drive: Drive, flavour: str, log_events: list[Any]
) -> None:
    """A handler still running at the deadline: given back, named, TIMEOUT, within budget."""
    handler = Handler(hold=lambda m: m.id == "0")
    setup = Setup(flavour, 1, handler, concurrency=2)
    app = app_with(setup, stop_timeout=0.5)
    drive.start(app)
    wait_until(lambda: handler.started == ["0"])
    began = time.monotonic()
    code = drive.stop()
    took = time.monotonic() - began
    handler.gate.set()  # let the abandoned handler end (the test's hygiene)
    assert code == ExitCode.TIMEOUT
    assert 0.4 <= took < 0.5 + 0.4, took  # cut ~0.1 s before the 0.5 s deadline
    assert setup.source.given_back == ["0"]
    assert setup.source.acked == []
    error = app.components["orders"].error
    assert isinstance(error, DeadlineExceeded)
    assert len(error.cut) == 1
    assert error.cut[0].startswith("message 0 (delivery 1, ")
    assert "gave back 1 unfinished message(s)" in str(error)
    (cut,) = events(log_events, "messages cut at the stop deadline; given back")
    assert cut["cut"] == error.cut
    assert cut["component"] == setup.consumer.name
    assert setup.consumer.stats().cut == 1
    assert handler.tokens["0"].cancelled  # told before the cut
    assert setup.remaining() == ["0"]


def test_a_handler_honouring_its_token_ends_before_the_cut(drive: Drive, flavour: str) -> None:
    """current_token() in a handler is cancelled shortly before the cut; ending on it gives back."""
    handler = Handler(hold=lambda m: True, honour=True)
    setup = Setup(flavour, 2, handler, concurrency=2)
    app = app_with(setup, stop_timeout=1.0)
    drive.start(app)
    wait_until(lambda: len(handler.started) == 2)
    assert not any(t.cancelled for t in handler.tokens.values())
    assert drive.stop() == ExitCode.TIMEOUT
    assert all(t.cancelled for t in handler.tokens.values())
    assert sorted(setup.source.given_back) == ["0", "1"]
    error = app.components["orders"].error
    assert isinstance(error, DeadlineExceeded)
    assert len(error.cut) == 2
    assert sorted(setup.remaining()) == ["0", "1"]


def test_the_handler_token_is_live_during_an_ordinary_stop(drive: Drive, flavour: str) -> None:
    """The stop phase does not cancel a handler's token: it is cancelled only near the cut."""
    handler = Handler(hold=lambda m: True, honour=True)
    setup = Setup(flavour, 1, handler)
    drive.start(app_with(setup, stop_timeout=5.0))
    wait_until(lambda: handler.started == ["0"])
    stopping = drive._submit(lambda: drive.runner.stop("test"))  # type: ignore[union-attr]
    wait_until(lambda: setup.consumer._ledger.stopping)
    assert not handler.tokens["0"].cancelled
    handler.gate.set()
    assert stopping.result(BOUND) == ExitCode.OK
    assert setup.source.acked == ["0"]


def test_a_raising_handler_is_logged_counted_given_back_and_the_consumer_goes_on(
    drive: Drive, flavour: str, log_events: list[Any]
) -> None:
    """A handler error: logged with its stack, counted, given back; the next messages run."""
    handler = Handler(fail=lambda m: m.id == "1" and m.deliveries == 1)
    setup = Setup(flavour, 5, handler, concurrency=1)
    drive.start(app_with(setup))
    wait_until(lambda: setup.consumer.stats().acked == 5)
    assert drive.stop() == ExitCode.OK
    stats = setup.consumer.stats()
    assert (stats.failed, stats.given_back, stats.handled, stats.acked) == (1, 1, 5, 5)
    assert setup.source.given_back == ["1"]
    assert sorted(handler.done, key=int) == setup.ids  # "1" again, on its second delivery
    (failure,) = events(log_events, "handler raised; message given back")
    assert failure["message"] == "1"
    assert failure["deliveries"] == 1
    assert failure["exc_info"][0] is RuntimeError
    setup.assert_nothing_lost()


def test_shutdown_while_fetch_blocks_returns_promptly(drive: Drive, flavour: str) -> None:
    """An idle consumer, its fetch blocked on an empty queue: the stop takes well under 1 s."""
    setup = Setup(flavour, 0, Handler())
    drive.start(app_with(setup))
    wait_until(lambda: setup.source.fetches >= 1)
    began = time.monotonic()
    assert drive.stop() == ExitCode.OK
    assert time.monotonic() - began < 0.5


class RogueSource:
    """A source whose fetch ignores its token and blocks until ``release`` (bounded)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.fetching = threading.Event()
        self.given_back: list[str] = []

    def fetch(self, limit: int, token: CancelToken) -> Sequence[Message]:
        self.fetching.set()
        self.release.wait(BOUND)
        return [Message("late", {})]

    def ack(self, messages: Sequence[Message]) -> None:
        raise AssertionError("nothing is acked")

    def give_back(self, messages: Sequence[Message]) -> None:
        self.given_back.extend(m.id for m in messages)


class AsyncRogueSource(RogueSource):
    async def fetch(self, limit: int, token: CancelToken) -> Sequence[Message]:  # type: ignore[override]
        self.fetching.set()
        while not self.release.is_set():
            await asyncio.sleep(0.002)
        return [Message("late", {})]

    async def ack(self, messages: Sequence[Message]) -> None:  # type: ignore[override]
        raise AssertionError("nothing is acked")

    async def give_back(self, messages: Sequence[Message]) -> None:  # type: ignore[override]
        self.given_back.extend(m.id for m in messages)


def test_a_fetch_ignoring_its_token_holds_the_stop_only_its_grace(
    drive: Drive, flavour: str, log_events: list[Any]
) -> None:
    """A fetch that blocks past its token: the stop waits FETCH_GRACE at most, and says so."""
    source: RogueSource
    consumer: Consumer | AsyncConsumer
    if flavour == "async":
        source = AsyncRogueSource()
        consumer = AsyncConsumer(source, Handler().run_async)
    else:
        source = RogueSource()
        consumer = Consumer(source, Handler())
    app = App("rogue", stop_timeout=5.0)
    app.add(consumer, name="rogue")
    drive.start(app)
    assert source.fetching.wait(BOUND)
    began = time.monotonic()
    try:
        assert drive.stop() == ExitCode.OK
        took = time.monotonic() - began
    finally:
        source.release.set()
    assert took < consumer_module.FETCH_GRACE + consumer_module.WAKE + 0.5, took
    assert events(log_events, "fetch still running at the stop deadline")
    if flavour == "sync":  # the late batch is given back once the fetch returns
        wait_until(lambda: source.given_back == ["late"])


def test_a_failing_fetch_is_logged_backed_off_and_retried(
    drive: Drive, flavour: str, log_events: list[Any]
) -> None:
    """Fetch errors: logged with the stack, counted, retried after a backoff; nothing lost."""
    setup = Setup(flavour, 3, Handler(), fetch_errors=2)
    drive.start(app_with(setup))
    wait_until(lambda: setup.consumer.stats().acked == 3)
    assert drive.stop() == ExitCode.OK
    assert setup.consumer.stats().fetch_errors == 2
    failures = events(log_events, "fetch raised")
    assert [f["failures_in_a_row"] for f in failures] == [1, 2]
    assert [f["retry_in"] for f in failures] == [0.05, 0.1]
    assert failures[0]["exc_info"][0] is ConnectionError
    setup.assert_nothing_lost()


def test_max_fetch_failures_fails_the_component(drive: Drive, flavour: str) -> None:
    """With max_fetch_failures, that many failed fetches in a row fail it: exit FAILED."""
    setup = Setup(flavour, 3, Handler(), fetch_errors=100, max_fetch_failures=2)
    app = app_with(setup)
    drive.start(app)
    assert drive.wait() == ExitCode.FAILED
    assert isinstance(app.components["orders"].error, ConnectionError)
    assert setup.consumer.stats().fetch_errors == 2
    assert setup.remaining() == setup.ids


def test_duplicates_are_acked_without_handling(drive: Drive, flavour: str) -> None:
    """With a Dedupe, a redelivered id that was done is acked, not handled again."""
    handler = Handler()
    setup = Setup(flavour, 3, handler, dedupe=MemoryDedupe())
    setup.q.put_nowait(Message("1", {"n": 1}, deliveries=2))
    drive.start(app_with(setup))
    wait_until(lambda: setup.consumer.stats().acked == 4)
    assert drive.stop() == ExitCode.OK
    assert sorted(handler.done) == ["0", "1", "2"]
    assert sorted(setup.source.acked) == ["0", "1", "1", "2"]
    assert setup.consumer.stats().duplicates == 1


# -- direct calls: what the runner's calls do, without an App -----------------------------


class Direct:
    """Run a sync consumer the way a runner does: run in a thread, stop with a deadline."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.run_source = CancelSource()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.consumer.run(self.run_source.token)
        except BaseException as error:
            self.error = error

    def stop(self, timeout: float = 5.0) -> None:
        self.run_source.cancel("stop phase")
        self.thread.join(BOUND)
        assert not self.thread.is_alive()
        self.consumer.stop(CancelSource(timeout=timeout).token)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    concurrency=st.integers(1, 4),
    prefetch=st.integers(0, 3),
    plan=st.lists(st.tuples(st.integers(0, 7), st.booleans()), min_size=1, max_size=24),
)
def test_the_concurrency_bound_holds_whatever_finishes_or_fails(
    concurrency: int, prefetch: int, plan: list[tuple[int, bool]]
) -> None:
    """Handlers ending in any order, some failing: never more than ``concurrency`` at once,
    never more than ``concurrency + prefetch`` fetched and not settled, nothing lost."""
    n = len(plan)
    lock = threading.Condition()
    running: dict[str, tuple[threading.Event, list[bool]]] = {}
    outcomes: list[str] = []
    peak = 0

    def handle(m: Message) -> None:
        nonlocal peak
        key = f"{m.id}/{m.deliveries}"
        release, fail = threading.Event(), [False]
        with lock:
            running[key] = (release, fail)
            peak = max(peak, len(running))
            lock.notify_all()
        failed = True
        try:
            assert release.wait(BOUND)
            failed = fail[0]
        finally:
            with lock:
                running.pop(key)
                if not failed:
                    outcomes.append(m.id)
                lock.notify_all()
        if failed:
            raise RuntimeError("planned failure")

    def absent(key: str) -> Callable[[], bool]:
        return lambda: key not in running

    q: queue.Queue[Any] = queue.Queue()
    for i in range(n):
        q.put(Message(str(i), i))
    consumer = Consumer(QueueSource(q), handle, concurrency=concurrency, prefetch=prefetch)
    direct = Direct(consumer)
    try:
        steps = iter(plan)
        with lock:
            while len(outcomes) < n:
                assert lock.wait_for(lambda: running, BOUND), "nothing runs"
                stats = consumer.stats()
                assert len(running) <= concurrency
                assert stats.in_flight + stats.buffered <= concurrency + prefetch
                pick, failing = next(steps, (0, False))
                key = sorted(running)[pick % len(running)]
                release, fail = running[key]
                fail[0] = failing
                release.set()
                assert lock.wait_for(absent(key), BOUND)
    finally:
        with lock:
            for release, _ in running.values():
                release.set()
        direct.stop()
    stats = consumer.stats()
    assert peak <= concurrency
    assert consumer.peak_concurrency <= concurrency
    assert sorted(outcomes, key=int) == [str(i) for i in range(n)]
    assert stats.acked == n
    assert stats.handled == n
    assert stats.failed == stats.given_back
    assert q.empty()
    assert q.unfinished_tasks == 0


def test_a_cut_handler_that_finishes_later_is_neither_acked_nor_given_back_twice() -> None:
    """After the cut, the late end of a handler changes nothing: given back once, never acked."""
    handler = Handler(hold=lambda m: True)
    setup = Setup("sync", 1, handler, dedupe=MemoryDedupe())
    assert isinstance(setup.consumer, Consumer)
    direct = Direct(setup.consumer)
    wait_until(lambda: handler.started == ["0"])
    with pytest.raises(DeadlineExceeded):
        direct.stop(timeout=0.3)
    handler.gate.set()
    wait_until(lambda: handler.done == ["0"])
    wait_until(lambda: len(setup.consumer.dedupe) == 1)  # type: ignore[arg-type]
    assert setup.source.given_back == ["0"]
    assert setup.source.acked == []
    # The redelivery finds the effect done: a duplicate, acked without handling.
    assert not setup.consumer.dedupe.claim(Message("0", {}, deliveries=2))  # type: ignore[union-attr]


def test_a_consumer_runs_once() -> None:
    """A second run is refused with a message saying what to do."""
    consumer = Consumer(QueueSource(queue.Queue()), print)
    direct = Direct(consumer)
    direct.stop()
    with pytest.raises(RuntimeError, match="ran already; a consumer runs once"):
        consumer.run(CancelSource().token)


def test_stop_without_run_returns_at_once() -> None:
    """A consumer whose run never began has nothing to stop."""
    consumer = Consumer(QueueSource(queue.Queue()), print)
    consumer.stop(CancelSource(timeout=1).token)
    assert consumer.stats().fetched == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency must be an int >= 1"),
        ({"concurrency": True}, "concurrency must be an int >= 1"),
        ({"prefetch": -1}, "prefetch must be an int >= 0"),
        ({"max_fetch_failures": 0}, "max_fetch_failures must be an int >= 1"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """A nonsensical bound is a ValueError at construction, naming the argument."""
    with pytest.raises(ValueError, match=message):
        Consumer(QueueSource(queue.Queue()), print, **kwargs)


def test_the_sources_satisfy_the_protocols() -> None:
    """The stdlib adapters are MessageSource / AsyncMessageSource."""
    assert isinstance(QueueSource(queue.Queue()), MessageSource)
    assert isinstance(AsyncQueueSource(asyncio.Queue()), AsyncMessageSource)


def test_queue_source_gives_back_at_the_end_with_one_more_delivery() -> None:
    """QueueSource.give_back appends (FIFO order of the given back kept); join() balances."""
    q: queue.Queue[Any] = queue.Queue()
    for body in ("a", "b", "c"):
        q.put(body)
    source = QueueSource(q)
    token = CancelSource().token
    a, b = source.fetch(2, token)
    source.give_back([a, b])
    again = source.fetch(10, token)
    assert [m.body for m in again] == ["c", "a", "b"]
    assert [m.deliveries for m in again] == [1, 2, 2]
    assert [again[1].id, again[2].id] == [a.id, b.id]
    source.ack(again)
    assert q.unfinished_tasks == 0


def test_queue_source_fetch_returns_early_on_cancellation() -> None:
    """An empty QueueSource's fetch returns [] soon after its token is cancelled."""
    source = QueueSource(queue.Queue(), wait=5.0)
    cancel = CancelSource()
    threading.Timer(0.05, cancel.cancel).start()
    began = time.monotonic()
    assert source.fetch(1, cancel.token) == []
    assert time.monotonic() - began < 0.05 + consumer_module.POLL + 0.2


def test_async_queue_source_fetch_returns_early_on_cancellation() -> None:
    """An empty AsyncQueueSource's fetch returns [] as its token is cancelled."""

    async def main() -> tuple[list[Message], float]:
        source = AsyncQueueSource(asyncio.Queue(), wait=5.0)
        cancel = CancelSource()
        asyncio.get_running_loop().call_later(0.05, cancel.cancel)
        began = time.monotonic()
        got = await source.fetch(1, cancel.token)
        return got, time.monotonic() - began

    got, took = asyncio.run(main())
    assert got == []
    assert took < 0.3


# -- the real process: SIGTERM mid-stream with the main thread busy -----------------------

CHILD = "tests.procs.consumer_child"


@pytest.mark.parametrize(
    ("runner", "kind"),
    [
        ("thread", "sync"),
        ("asyncio", "sync"),
        ("thread", "async"),
        ("asyncio", "async"),
    ],
)
def test_sigterm_mid_stream_loses_nothing(runner: str, kind: str) -> None:
    """SIGTERM while messages flow and the main thread computes: exit 0, each message
    handled exactly once and acked, or still in the queue."""
    proc = subprocess.Popen(
        [sys.executable, "-m", CHILD, runner, kind],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        report: dict[str, Any] | None = None
        sent = False
        for line in proc.stdout:
            event = json.loads(line) if line.startswith("{") else {}
            if event.get("event") == "streaming" and not sent:
                os.kill(proc.pid, signal.SIGTERM)
                sent = True
            if event.get("event") == "report":
                report = event
        code = proc.wait(BOUND)
        stderr = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert sent, stderr
    assert report is not None, stderr
    assert code == 0, stderr
    handled, left, total = report["handled"], report["left"], report["total"]
    assert len(handled) == len(set(handled)), "a message was handled twice"
    assert sorted(report["acked"]) == sorted(handled)
    assert sorted(handled + left) == list(range(total))
    assert 0 < len(handled) < total, "SIGTERM landed mid-stream"
    assert report["stats"]["in_flight"] == 0
    assert report["busy_loops"] > 0


# -- docstring examples -------------------------------------------------------------------

EXAMPLE = re.compile(r"Example::\n\n((?:    .*\n|\n)+)")


@pytest.mark.parametrize(
    "name",
    [
        *(f"consumer.{n}" for n in consumer_module.__all__ if n != "CUT_MARGIN"),
        *(f"dedupe.{n}" for n in dedupe_module.__all__),
    ],
)
def test_docstring_examples_run(name: str) -> None:
    """Every public name of the consumer modules has an example, and it runs."""
    module = consumer_module if name.startswith("consumer.") else dedupe_module
    obj = getattr(module, name.split(".", 1)[1])
    doc = inspect.getdoc(obj) or ""
    found = EXAMPLE.search(doc + "\n")
    assert found, f"{name} has no Example:: block"
    namespace: dict[str, Any] = {
        "asyncio": asyncio,
        "queue": queue,
        "threading": threading,
        "lifecycle": lifecycle,
        **{n: getattr(consumer_module, n) for n in consumer_module.__all__},
        **{n: getattr(dedupe_module, n) for n in dedupe_module.__all__},
    }
    exec(textwrap.dedent(found.group(1)), namespace)


def test_an_async_handler_task_cancelled_from_outside_gives_its_message_back(
    log_events: list[Any],
) -> None:
    """The loop ending under an AsyncConsumer: the running message is given back, not failed."""
    handler = Handler(hold=lambda m: True)
    setup = Setup("async", 1, handler)

    async def main() -> None:
        run = CancelSource()
        asyncio.get_running_loop().create_task(setup.consumer.run(run.token))  # type: ignore[arg-type]
        while handler.started != ["0"]:
            await asyncio.sleep(0.001)
        # Returning ends asyncio.run, which cancels every task left.

    asyncio.run(main())
    assert setup.source.given_back == ["0"]
    assert setup.consumer.stats().failed == 0
    assert events(log_events, "handler task cancelled; message given back")
    assert not events(log_events, "handler raised; message given back")


def test_handler_and_fetch_threads_keep_the_program_signal_mask() -> None:
    """Run from a lifecycle helper thread (signals blocked), the consumer's threads that run
    user code still have the program's mask: a process a handler starts can be terminated."""
    masks: dict[str, set[int]] = {}

    class Source(QueueSource):
        def fetch(self, limit: int, token: CancelToken) -> list[Message]:
            masks.setdefault("fetch", set(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
            return super().fetch(limit, token)

    def handle(m: Message) -> None:
        masks["handler"] = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))

    q: queue.Queue[Any] = queue.Queue()
    q.put("one")
    consumer = Consumer(Source(q), handle)
    run = CancelSource()
    thread = threading.Thread(target=helper_thread(lambda: consumer.run(run.token)), daemon=True)
    thread.start()
    wait_until(lambda: "handler" in masks)
    run.cancel("done")
    thread.join(BOUND)
    consumer.stop(CancelSource(timeout=5).token)
    program = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
    assert masks == {"fetch": program, "handler": program}
    assert signal.SIGTERM not in masks["handler"]


# -- review findings: claims, settling at the stop, what the source confirmed ---------------


class Hooked:
    """Wraps a flavour's recording source: ``ack``/``give_back`` can hold on a gate, raise,
    or answer how many they took; ``calls`` records (what, ids) in the order they returned."""

    def __init__(self, setup: Setup) -> None:
        self.inner = setup.source
        self.calls: list[tuple[str, list[str]]] = []
        self.entered: list[str] = []
        self.gate = threading.Event()
        self.hold: set[str] = set()  # "ack" / "give_back": hold until the gate opens
        self.raising: set[str] = set()  # "ack" / "give_back": raise ConnectionError
        self.answer: int | None = None  # what give_back returns (None: as the inner one)

    def _before(self, what: str) -> None:
        self.entered.append(what)
        if what in self.raising:
            raise ConnectionError(f"{what}: broker unreachable")

    async def _hold_async(self, what: str) -> None:
        end = time.monotonic() + BOUND
        while what in self.hold and not self.gate.is_set():
            assert time.monotonic() < end, "the gate never opened"
            await asyncio.sleep(0.002)

    def fetch(self, limit: int, token: CancelToken) -> Any:
        return self.inner.fetch(limit, token)

    def _through(self, what: str, messages: Sequence[Message]) -> Any:
        """Pass ``what`` on to the inner source (held, raising, answering as set)."""
        self._before(what)
        if isinstance(self.inner, AsyncRecordingSource):
            return self._through_async(what, messages)
        if what in self.hold:
            assert self.gate.wait(BOUND)
        getattr(self.inner, what)(messages)
        return self._after(what, messages)

    async def _through_async(self, what: str, messages: Sequence[Message]) -> Any:
        await self._hold_async(what)
        await getattr(self.inner, what)(messages)
        return self._after(what, messages)

    def _after(self, what: str, messages: Sequence[Message]) -> int | None:
        self.calls.append((what, [m.id for m in messages]))
        return self.answer if what == "give_back" else None

    def ack(self, messages: Sequence[Message]) -> Any:
        return self._through("ack", messages)

    def give_back(self, messages: Sequence[Message]) -> Any:
        return self._through("give_back", messages)


def hooked(flavour: str, n: int, handler: Handler, **kwargs: Any) -> tuple[Setup, Hooked]:
    """A `Setup` whose consumer goes through a `Hooked` source."""
    setup = Setup(flavour, n, handler, **kwargs)
    source = Hooked(setup)
    if flavour == "sync":
        setup.consumer = Consumer(source, handler, **kwargs)
    else:
        setup.consumer = AsyncConsumer(source, handler.run_async, **kwargs)
    return setup, source


def test_a_redelivery_under_a_live_claim_is_neither_acked_nor_handled(
    drive: Drive, flavour: str
) -> None:
    """A second delivery of a message still being handled is not acked: it follows the first,
    so when that run fails both go back, and the message is handled (once)."""
    handler = Handler(hold=lambda m: m.deliveries == 1, fail=lambda m: m.deliveries == 1)
    setup = Setup(flavour, 0, handler, concurrency=2, dedupe=MemoryDedupe())
    setup.q.put_nowait(Message("7", {}, deliveries=1))
    drive.start(app_with(setup))
    wait_until(lambda: handler.started == ["7"])
    setup.q.put_nowait(Message("7", {}, deliveries=2))
    consumer = setup.consumer

    def settled() -> tuple[int, int, int]:
        stats = consumer.stats()
        return stats.fetched, stats.buffered, len(consumer._ledger.running)

    wait_until(lambda: settled() == (2, 0, 1))
    assert setup.source.acked == []  # never acked on a live claim
    assert (consumer.stats().duplicates, consumer.stats().busy) == (0, 1)
    handler.gate.set()  # the first run fails: both given back, redelivered
    wait_until(lambda: consumer.stats().acked == 2)
    assert drive.stop() == ExitCode.OK
    assert handler.started == ["7", "7"]
    assert handler.done == ["7"]
    assert setup.source.given_back == ["7", "7"]
    assert setup.source.acked == ["7", "7"]  # handled, then the other one as a duplicate
    assert setup.remaining() == []


def test_a_plain_bool_dedupe_false_still_means_done(drive: Drive) -> None:
    """A store answering ``claim() -> bool``: False is DONE, acked without handling."""

    class Done:
        def claim(self, message: Message) -> bool:
            return message.id != "1"

        def done(self, message: Message) -> None:
            pass

        def release(self, message: Message) -> None:
            pass

    handler = Handler()
    setup = Setup("sync", 3, handler, dedupe=Done())
    drive.start(app_with(setup))
    wait_until(lambda: setup.consumer.stats().acked == 3)
    assert drive.stop() == ExitCode.OK
    assert sorted(handler.done) == ["0", "2"]
    assert setup.consumer.stats().duplicates == 1


def test_a_give_back_after_the_warning_holds_the_stop_until_it_returns(flavour: str) -> None:
    """A handler that ends on its cancelled token: the stop returns only after its give_back."""
    handler = Handler(hold=lambda m: True, honour=True)
    setup, source = hooked(flavour, 1, handler)
    source.hold.add("give_back")
    outcome: list[str] = []

    def in_thread() -> None:
        consumer = setup.consumer
        if isinstance(consumer, Consumer):
            direct = Direct(consumer)
            wait_until(lambda: handler.started == ["0"])
            try:
                direct.stop(timeout=1.0)
            except DeadlineExceeded:
                outcome.append("stop raised")
            return

        async def main() -> None:
            assert isinstance(consumer, AsyncConsumer)
            run = CancelSource()
            task = asyncio.ensure_future(consumer.run(run.token))
            while handler.started != ["0"]:
                await asyncio.sleep(0.002)
            run.cancel("stop phase")
            await task
            try:
                await consumer.stop(CancelSource(timeout=1.0).token)
            except DeadlineExceeded:
                outcome.append("stop raised")

        asyncio.run(main())

    stopping = threading.Thread(target=in_thread, daemon=True)
    stopping.start()
    wait_until(lambda: "give_back" in source.entered)
    stopping.join(0.02)  # a stop that does not wait for the give_back returns by now
    returned_early = not stopping.is_alive()
    source.gate.set()
    stopping.join(BOUND)
    assert not stopping.is_alive()
    assert not returned_early, "the stop returned while the give_back was in progress"
    assert source.calls == [("give_back", ["0"])]
    assert outcome == ["stop raised"]
    stats = setup.consumer.stats()
    assert (stats.cut, stats.given_back) == (1, 1)


def test_an_ack_still_in_progress_at_the_deadline_is_named_and_times_out(flavour: str) -> None:
    """A handler that finished but whose ack hangs: the stop names it, DeadlineExceeded."""
    handler = Handler(hold=lambda m: True)
    setup, source = hooked(flavour, 1, handler)
    source.hold.add("ack")
    errors: list[BaseException] = []
    consumer = setup.consumer
    try:
        if isinstance(consumer, Consumer):
            direct = Direct(consumer)
            wait_until(lambda: handler.started == ["0"])
            handler.gate.set()
            wait_until(lambda: "ack" in source.entered)
            try:
                direct.stop(timeout=0.5)
            except DeadlineExceeded as error:
                errors.append(error)
        else:

            async def main() -> None:
                assert isinstance(consumer, AsyncConsumer)
                run = CancelSource()
                task = asyncio.ensure_future(consumer.run(run.token))
                while handler.started != ["0"]:
                    await asyncio.sleep(0.002)
                handler.gate.set()
                while "ack" not in source.entered:
                    await asyncio.sleep(0.002)
                run.cancel("stop phase")
                await task
                try:
                    await consumer.stop(CancelSource(timeout=0.5).token)
                except DeadlineExceeded as error:
                    errors.append(error)

            asyncio.run(main())
    finally:
        source.gate.set()
    (raised,) = errors
    assert isinstance(raised, DeadlineExceeded)
    assert len(raised.cut) == 1
    assert raised.cut[0].startswith("message 0 (delivery 1, ")
    assert "acking" in raised.cut[0]
    assert consumer.stats().handled == 1


def test_given_back_counts_what_the_source_confirmed(flavour: str) -> None:
    """give_back answering a count is believed; one that raises gives nothing back, and the
    cut says so."""
    handler = Handler(hold=lambda m: True)
    setup, source = hooked(flavour, 2, handler, concurrency=1, prefetch=1)
    source.answer = 0  # e.g. another consumer claimed it meanwhile
    consumer = setup.consumer
    errors: list[BaseException] = []
    try:
        if isinstance(consumer, Consumer):
            direct = Direct(consumer)
            wait_until(lambda: handler.started == ["0"] and consumer.stats().buffered == 1)
            direct.run_source.cancel("stop phase")
            direct.thread.join(BOUND)
            source.raising.add("give_back")
            try:
                consumer.stop(CancelSource(timeout=0.3).token)
            except DeadlineExceeded as error:
                errors.append(error)
        else:

            async def main() -> None:
                assert isinstance(consumer, AsyncConsumer)
                run = CancelSource()
                task = asyncio.ensure_future(consumer.run(run.token))
                while not (handler.started == ["0"] and consumer.stats().buffered == 1):
                    await asyncio.sleep(0.002)
                run.cancel("stop phase")
                await task
                source.raising.add("give_back")
                try:
                    await consumer.stop(CancelSource(timeout=0.3).token)
                except DeadlineExceeded as error:
                    errors.append(error)

            asyncio.run(main())
    finally:
        handler.gate.set()
    stats = consumer.stats()
    assert (stats.given_back, stats.cut, stats.source_errors) == (0, 1, 1)
    (raised,) = errors
    assert "gave back" not in str(raised)
    assert "could not give back 1" in str(raised)


def test_an_async_consumer_refuses_a_dedupe_that_blocks_its_loop() -> None:
    """AsyncConsumer takes a MemoryDedupe; a networked sync Dedupe is refused, with the fix."""

    class Store:
        def claim(self, message: Message) -> bool:
            return True

        def done(self, message: Message) -> None:
            pass

        def release(self, message: Message) -> None:
            pass

    source = AsyncQueueSource(asyncio.Queue())

    async def handle(m: Message) -> None:
        pass

    AsyncConsumer(source, handle, dedupe=MemoryDedupe())
    with pytest.raises(TypeError, match=r"AsyncConsumer: dedupe .*Store.*event loop.*Consumer"):
        AsyncConsumer(source, handle, dedupe=Store())
