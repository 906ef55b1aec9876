"""Where token callbacks run, what a failing one does, and what keeps a registration alive.

Library cancellations (`cancel_in_background`, deadlines) run user callbacks
on lifecycle callback threads, never in the caller or on the timer thread; the
library's own wake-ups (`on_cancel_inline`) stay inline. A callback's
BaseException is logged and the traversal finishes. A token with a registered
callback is held by whatever can still cancel it (its parents, the timer).

The executor is process-wide: every test that hands callbacks to it ends with
``idle()``, so that the next test starts with nothing queued or running.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import logging
import operator
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import pytest
import structlog

from lifecycle import DEADLINE_EXCEEDED, Cancelled, CancelSource, CancelToken, DeadlineTimer
from lifecycle._core import tokens as _tokens
from tests.fakes import FakeClock
from tests.test_tokens import in_forked_child

JOIN = 10.0  # bound on every join / wait that is expected to finish at once
CALLBACK_THREAD = "lifecycle-callbacks"


def cancel_in_background(source: CancelSource, reason: str) -> None:
    _tokens.cancel_in_background(source, reason)


def on_cancel_inline(token: CancelToken, fn: Callable[[], object]) -> Callable[[], bool]:
    return _tokens.on_cancel_inline(token, fn)


def idle() -> None:
    """Wait (bounded) until the callback executor has nothing queued or running."""
    assert True is _tokens.wait_callbacks_idle(JOIN)


@pytest.fixture
def timer(clock: FakeClock) -> DeadlineTimer:
    """A deadline timer on the fake clock that fires only on ``fire_due()``."""
    return DeadlineTimer(clock, threaded=False)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event that blocked callbacks wait on; set at teardown so none stays blocked."""
    event = threading.Event()
    try:
        yield event
    finally:
        event.set()
        idle()


def in_thread(target: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def blocker(release: threading.Event, started: threading.Event) -> Callable[[], None]:
    """A callback that says it started, then blocks until ``release`` (bounded)."""

    def callback() -> None:
        started.set()
        release.wait(JOIN * 3)

    return callback


def block_a_callback_thread(release: threading.Event) -> CancelSource:
    """A source cancelled in the background whose callback now blocks a callback thread."""
    source = CancelSource()
    started = threading.Event()
    source.token.on_cancel(blocker(release, started))
    cancel_in_background(source, "stop")
    assert True is started.wait(JOIN)
    return source


def callback_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(CALLBACK_THREAD)]


def collected(ref: weakref.ref[CancelToken]) -> bool:
    gc.collect()
    return ref() is None


# -- cancel_in_background ------------------------------------------------------


def test_background_cancel_returns_while_a_callback_blocks(release):
    """cancel_in_background() returns while a callback of the token is still blocked."""
    source = CancelSource()
    started = threading.Event()
    source.token.on_cancel(blocker(release, started))
    canceller = in_thread(lambda: cancel_in_background(source, "shutdown"))
    canceller.join(JOIN)
    assert True is started.wait(JOIN)
    expected = (False, True, "shutdown", False)
    assert expected == (
        canceller.is_alive(),
        source.token.cancelled,
        source.token.reason,
        release.is_set(),
    )


def test_background_cancel_marks_the_whole_tree_and_wakes_thread_waiters(release):
    """The whole tree is cancelled and a thread waiter woken while a root callback blocks."""
    a, b = CancelSource(), CancelSource()
    child = CancelSource(a.token)
    grandchild = CancelSource(child.token)
    linked = CancelSource.linked(grandchild.token, b.token)
    started = threading.Event()
    a.token.on_cancel(blocker(release, started))
    results: list[bool] = []
    waiter = in_thread(lambda: results.append(linked.token.wait(JOIN)))
    canceller = in_thread(lambda: cancel_in_background(a, "shutdown"))
    canceller.join(JOIN)
    waiter.join(JOIN)
    reasons = [s.token.reason for s in (a, child, grandchild, linked)]
    expected = (["shutdown"] * 4, [True], False, False)
    assert expected == (reasons, results, b.token.cancelled, release.is_set())


def test_background_cancel_wakes_an_asyncio_waiter_while_a_callback_blocks(release):
    """A task in wait_async() wakes at a background cancel from the loop while a callback blocks."""
    source = CancelSource()
    started = threading.Event()
    source.token.on_cancel(blocker(release, started))

    async def main() -> bool:
        waiter = asyncio.create_task(source.token.wait_async())
        await asyncio.sleep(0)  # the waiter is parked
        cancel_in_background(source, "shutdown")  # on the loop, as the asyncio runner does
        return await asyncio.wait_for(waiter, JOIN)

    expected = (True, False)
    assert expected == (asyncio.run(main()), release.is_set())


def test_background_callbacks_run_on_callback_threads_never_the_caller():
    """Callbacks of a background cancel run on a lifecycle-callbacks thread, not the caller's."""
    source = CancelSource()
    child = CancelSource(source.token)
    names: list[str] = []
    for token in (source.token, child.token):
        token.on_cancel(lambda: names.append(threading.current_thread().name))
    cancel_in_background(source, "shutdown")
    idle()
    expected = [True, True]
    assert expected == [n.startswith(CALLBACK_THREAD) for n in names]
    assert threading.current_thread().name not in names


def test_a_blocked_callback_does_not_delay_the_others(release):
    """A callback blocked forever delays neither the callbacks after it nor a later cancel's."""
    first, second = CancelSource(), CancelSource()
    started = threading.Event()
    after, later = threading.Event(), threading.Event()
    first.token.on_cancel(blocker(release, started))
    first.token.on_cancel(after.set)
    second.token.on_cancel(later.set)
    cancel_in_background(first, "stop")
    assert True is started.wait(JOIN)
    cancel_in_background(second, "stop")
    expected = (True, True, False)
    assert expected == (after.wait(JOIN), later.wait(JOIN), release.is_set())


def test_background_cancel_runs_inline_wakeups_in_the_caller():
    """Inline callbacks run in the canceller's thread before cancel_in_background returns."""
    source = CancelSource()
    child = CancelSource(source.token)
    seen: list[str] = []
    on_cancel_inline(child.token, lambda: seen.append(threading.current_thread().name))
    cancel_in_background(source, "stop")
    expected = [threading.current_thread().name]
    assert expected == seen


def test_a_woken_thread_waiter_finds_the_wakeups_done():
    """Thread waiters are woken only after every inline wake-up of the tree has run."""
    source = CancelSource()
    child = CancelSource(source.token)
    assert False is source.token.wait(0)  # the waiters' event now exists
    event = source.token._event
    assert event is not None
    woken_before: list[bool] = []
    on_cancel_inline(child.token, lambda: woken_before.append(event.is_set()))
    cancel_in_background(source, "stop")
    expected = ([False], True)
    assert expected == (woken_before, event.is_set())


def test_user_cancel_runs_wakeups_and_callbacks_in_the_caller():
    """A user's cancel() runs inline wake-ups and user callbacks in the calling thread."""
    source = CancelSource()
    seen: list[tuple[str, str]] = []
    name = threading.current_thread().name
    source.token.on_cancel(lambda: seen.append(("user", threading.current_thread().name)))
    on_cancel_inline(source.token, lambda: seen.append(("inline", threading.current_thread().name)))
    source.cancel()
    expected = [("inline", name), ("user", name)]
    assert expected == seen


def test_inline_registration_detaches_like_on_cancel():
    """on_cancel_inline returns a detach that reports True once, before firing."""
    source = CancelSource()
    calls: list[int] = []
    detach = on_cancel_inline(source.token, lambda: calls.append(1))
    detached = (detach(), detach())
    source.cancel()
    expected: tuple[tuple[bool, bool], list[int], int] = ((True, False), [], 0)
    assert expected == (detached, calls, len(source.token._callbacks or ()))


def test_inline_registration_on_a_cancelled_token_runs_at_once():
    """on_cancel_inline on a cancelled token runs the callback at once; its detach says False."""
    source = CancelSource()
    source.cancel()
    calls: list[int] = []
    detach = on_cancel_inline(source.token, lambda: calls.append(1))
    expected = ([1], False)
    assert expected == (calls, detach())


def test_on_cancel_inline_rejects_bad_arguments():
    """on_cancel_inline names the argument that is wrong."""
    with pytest.raises(TypeError, match="CancelToken"):
        on_cancel_inline(CancelSource(), lambda: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        on_cancel_inline(CancelSource().token, 42)  # type: ignore[arg-type]


def test_cancel_in_background_rejects_bad_arguments():
    """cancel_in_background takes a CancelSource and a str reason, and says so."""
    with pytest.raises(TypeError, match=r"CancelSource.*source\.token"):
        cancel_in_background(CancelSource().token, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reason"):
        cancel_in_background(CancelSource(), 42)  # type: ignore[arg-type]


def test_background_cancel_is_idempotent_and_first_reason_wins():
    """A second background cancel changes nothing and runs no callback twice."""
    source = CancelSource()
    calls: list[str | None] = []
    source.token.on_cancel(lambda: calls.append(source.token.reason))
    source.cancel("first")
    cancel_in_background(source, "second")
    idle()
    expected = (["first"], "first")
    assert expected == (calls, source.token.reason)


def test_background_cancel_from_a_callback_is_reentrant():
    """A wake-up and a user callback may themselves cancel in the background."""
    first, second, third = CancelSource(), CancelSource(), CancelSource()
    ran = threading.Event()
    on_cancel_inline(first.token, lambda: cancel_in_background(second, "from wake-up"))
    second.token.on_cancel(lambda: cancel_in_background(third, "from callback"))
    third.token.on_cancel(ran.set)
    cancel_in_background(first, "stop")
    assert True is ran.wait(JOIN)
    idle()
    expected = ("from wake-up", "from callback")
    assert expected == (second.token.reason, third.token.reason)


def test_background_cancel_landing_inside_the_executor_is_served():
    """A background cancel nested in another's hand-over (a re-entrant call) loses no callback."""
    outer, nested = CancelSource(), CancelSource()
    calls: list[str] = []
    outer.token.on_cancel(lambda: calls.append("outer"))
    nested.token.on_cancel(lambda: calls.append("nested"))
    executor = _tokens._executor
    real_queue = executor._queue

    class InterruptedDeque(collections.deque):  # type: ignore[type-arg]
        def extend(self, items: object) -> None:
            executor._queue = real_queue
            cancel_in_background(nested, "nested")  # lands inside the outer hand-over
            real_queue.extend(items)  # type: ignore[arg-type]

    executor._queue = InterruptedDeque()
    try:
        cancel_in_background(outer, "outer")
    finally:
        executor._queue = real_queue
    idle()
    expected = ["nested", "outer"]
    assert expected == sorted(calls)


def test_cancel_landing_inside_on_cancel_runs_the_callback_once():
    """A cancel landing inside on_cancel's locked insert (a signal handler) still runs it once."""
    source = CancelSource()
    calls: list[int] = []

    class InterruptedDict(dict):  # type: ignore[type-arg]
        def __setitem__(self, key: object, value: object) -> None:
            cancel_in_background(source, "signal")  # lands between the check and the insert
            super().__setitem__(key, value)

    object.__setattr__(source.token, "_callbacks", InterruptedDict())  # the token is read-only
    detach = source.token.on_cancel(lambda: calls.append(1))
    idle()
    expected = ([1], False, "signal")
    assert expected == (calls, detach(), source.token.reason)


# -- a second cancel of a tree being cancelled ---------------------------------------


def test_a_second_cancel_waits_for_the_first_ones_wakeups(release):
    """A second cancel of a tree another thread is cancelling returns after its wake-ups ran."""
    root = CancelSource()
    kid = CancelSource(root.token)
    in_wakeup = threading.Event()
    order: list[str] = []

    def wakeup() -> None:
        in_wakeup.set()
        release.wait(JOIN)
        order.append("first's wake-up done")

    on_cancel_inline(kid.token, wakeup)
    first = in_thread(lambda: cancel_in_background(root, "first"))
    assert True is in_wakeup.wait(JOIN)

    def second_cancel() -> None:
        cancel_in_background(root, "second")
        order.append("second")

    second = in_thread(second_cancel)
    second.join(0.2)  # time enough to return, were it not waiting
    waiting = second.is_alive()
    release.set()
    second.join(JOIN)
    first.join(JOIN)
    expected = (True, ["first's wake-up done", "second"], "first")
    assert expected == (waiting, order, kid.token.reason)


def test_a_second_cancel_returns_with_the_whole_tree_cancelled():
    """A second cancel racing a first over 50 000 children returns with all of them cancelled."""
    root = CancelSource()
    kids = [CancelSource(root.token) for _ in range(50_000)]
    drained = threading.Event()
    on_cancel_inline(kids[0].token, drained.set)  # a server's drain flag
    first = in_thread(lambda: cancel_in_background(root, "first"))
    until = time.monotonic() + JOIN
    while not root.token.cancelled and time.monotonic() < until:
        pass  # the first cancel has begun
    cancel_in_background(root, "second")
    seen = (sum(k.token.cancelled for k in kids), drained.is_set())
    first.join(JOIN)
    expected = (len(kids), True)
    assert expected == seen


def test_a_cancel_from_a_wakeup_of_the_same_tree_does_not_wait():
    """A wake-up cancelling its own tree again (same thread, re-entrant) returns at once."""
    root = CancelSource()
    kids = [CancelSource(root.token) for _ in range(3)]
    woken: list[int] = []

    def cancel_again() -> None:
        root.cancel("again")  # this thread is the one cancelling: no wait
        woken.append(0)

    on_cancel_inline(kids[0].token, cancel_again)
    on_cancel_inline(kids[1].token, functools.partial(woken.append, 1))
    on_cancel_inline(kids[2].token, functools.partial(woken.append, 2))
    done = threading.Event()

    def first_cancel() -> None:
        cancel_in_background(root, "first")
        done.set()

    canceller = in_thread(first_cancel)
    canceller.join(JOIN)
    expected = (True, [0, 1, 2], {"first"})
    assert expected == (done.is_set(), sorted(woken), {k.token.reason for k in kids})


def test_wakeups_of_two_threads_cancelling_each_others_tree_both_return(release):
    """Two wake-ups, each cancelling again the tree the other thread is waking, do not deadlock.

    Each cancel lands on a tree already marked, whose wake-ups are running in the
    other thread; neither may wait for the other, since each waits inside a wake-up.
    """
    a, b = CancelSource(), CancelSource()
    kid_a, kid_b = CancelSource(a.token), CancelSource(b.token)
    in_a, in_b = threading.Event(), threading.Event()
    returned: list[str] = []

    def wakeup(mine: threading.Event, theirs: threading.Event, other: CancelSource) -> None:
        mine.set()
        theirs.wait(JOIN)  # both trees marked, both threads inside a wake-up
        other.cancel("again")
        returned.append("again")

    on_cancel_inline(a.token, functools.partial(wakeup, in_a, in_b, b))
    on_cancel_inline(b.token, functools.partial(wakeup, in_b, in_a, a))
    threads = [
        in_thread(functools.partial(a.cancel, "a")),
        in_thread(functools.partial(b.cancel, "b")),
    ]
    for thread in threads:
        thread.join(JOIN)
    expected = ([False, False], ["again", "again"], ("a", "b"))
    assert expected == (
        [t.is_alive() for t in threads],
        returned,
        (kid_a.token.reason, kid_b.token.reason),
    )


BLOCKED_CANCELS = 500  # threads each inside a slow callback of its own cancel()


def micros_per_cancel(sources: list[CancelSource]) -> float:
    """Microseconds per cancel() of each of ``sources``, then per repeated cancel() of them."""
    start = time.perf_counter()
    for source in sources:
        source.cancel()
    first = time.perf_counter()
    for source in sources:
        source.cancel()
    return (first - start) / len(sources) * 1e6 + (time.perf_counter() - first) / len(sources) * 1e6


@pytest.mark.realtime
def test_realtime_cancels_cost_the_same_while_many_others_run_their_callbacks(release):
    """A cancel costs what it costs alone while 500 other threads run their cancels' callbacks."""

    def cost() -> float:
        return min(micros_per_cancel([CancelSource() for _ in range(5000)]) for _ in range(5))

    alone = cost()
    inside = threading.Semaphore(0)

    def cancel_with_a_slow_callback() -> None:
        def slow() -> None:
            inside.release()
            release.wait(JOIN)

        source = CancelSource()
        source.token.on_cancel(slow)
        source.cancel()

    threads = []
    for _ in range(BLOCKED_CANCELS):
        threads.append(in_thread(cancel_with_a_slow_callback))
        assert True is inside.acquire(timeout=JOIN)
    try:
        beside = cost()
    finally:
        release.set()
        for thread in threads:
            thread.join(JOIN)
    # Alone and beside them measure within 1.5x of each other on a busy machine; a
    # cost that grows with the cancellations under way is 10x and more at 500.
    assert beside < 3 * alone, (beside, alone)


def test_wait_callbacks_idle_with_a_huge_timeout_waits_for_the_callbacks(release):
    """wait_callbacks_idle(1e10) waits for a running callback like any other timeout."""
    block_a_callback_thread(release)
    results: list[object] = []

    def wait() -> None:
        try:
            results.append(_tokens.wait_callbacks_idle(1e10))
        except Exception as exc:  # recorded for the assertion
            results.append(exc)

    waiter = in_thread(wait)
    waiter.join(0.2)  # time enough to fail, were the timeout refused
    release.set()
    waiter.join(JOIN)
    expected = [True]
    assert expected == results


# -- the executor ---------------------------------------------------------------


def test_callback_threads_are_bounded_and_the_rest_queue(release):
    """More blocked callbacks than the pool allows: the threads stop at the bound, all run later."""
    bound = _tokens.CALLBACK_THREADS
    count = bound + 4
    started: list[int] = []
    cond = threading.Condition()

    def callback() -> None:
        with cond:
            started.append(1)
            cond.notify_all()
        release.wait(JOIN * 3)

    sources = [CancelSource() for _ in range(count)]
    for s in sources:
        s.token.on_cancel(callback)
        cancel_in_background(s, "stop")
    with cond:
        assert cond.wait_for(lambda: len(started) >= bound, JOIN)
    threads = len(callback_threads())
    release.set()
    idle()
    expected = (True, count)
    assert expected == (threads <= bound, len(started))


def test_an_idle_callback_thread_is_reused():
    """Callbacks handed over one after the other reuse an idle thread: the pool does not grow."""
    cancel_in_background(_with_callback(), "warm")
    idle()
    before = len(callback_threads())
    for _ in range(50):
        cancel_in_background(_with_callback(), "again")
        idle()
    assert len(callback_threads()) <= max(before, 1)


def _with_callback() -> CancelSource:
    source = CancelSource()
    source.token.on_cancel(lambda: None)
    return source


def test_wait_callbacks_idle_is_false_while_a_callback_runs(release):
    """wait_callbacks_idle() times out with False while a callback runs, True once it ends."""
    block_a_callback_thread(release)
    busy = _tokens.wait_callbacks_idle(0.05)
    release.set()
    expected = (False, True)
    assert expected == (busy, _tokens.wait_callbacks_idle(JOIN))


def test_wait_callbacks_idle_covers_a_cancel_still_handing_over(release):
    """Between marking a tree and handing its callbacks over, the executor is not idle."""
    source = CancelSource()
    marked = threading.Event()
    ran = threading.Event()

    def wakeup() -> None:  # runs after the marking, before the hand-over
        marked.set()
        release.wait(JOIN * 3)

    on_cancel_inline(source.token, wakeup)
    source.token.on_cancel(ran.set)
    canceller = in_thread(lambda: cancel_in_background(source, "stop"))
    assert True is marked.wait(JOIN)
    during = _tokens.wait_callbacks_idle(0)
    release.set()
    after = _tokens.wait_callbacks_idle(JOIN)
    canceller.join(JOIN)
    expected = (True, False, True, True)
    assert expected == (source.token.cancelled, during, after, ran.is_set())


def test_user_cancel_runs_every_callback_when_a_wakeup_raises_exit():
    """A wake-up raising SystemExit in a user's cancel(): the user callbacks still run first."""
    source = CancelSource()
    calls: list[str] = []

    def bad_wakeup() -> None:
        raise SystemExit(2)

    on_cancel_inline(source.token, bad_wakeup)
    source.token.on_cancel(lambda: calls.append("user"))
    with pytest.raises(SystemExit):
        source.cancel()
    expected = ["user"]
    assert expected == calls


@pytest.mark.process
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_a_working_executor(release):
    """A child forked while a callback blocks and the locks are held still runs callbacks."""
    block_a_callback_thread(release)
    held, done = threading.Event(), threading.Event()

    def hold_the_locks() -> None:  # a thread that does not exist in the child
        with _tokens._executor._lock, _tokens._LOCK:
            held.set()
            done.wait(JOIN)

    holder = in_thread(hold_the_locks)
    assert True is held.wait(JOIN)

    def callbacks_run_in_child() -> bool:
        source = CancelSource()
        names: list[str] = []
        source.token.on_cancel(lambda: names.append(threading.current_thread().name))
        cancel_in_background(source, "in child")
        idle_in_child = _tokens.wait_callbacks_idle(5.0)
        return idle_in_child and [n.startswith(CALLBACK_THREAD) for n in names] == [True]

    def release_the_locks() -> None:
        done.set()
        holder.join(JOIN)

    answer = in_forked_child(callbacks_run_in_child, release_the_locks)
    expected = b"ok"
    assert expected == answer


# -- deadlines ------------------------------------------------------------------


def test_a_blocked_deadline_callback_does_not_delay_another_deadline(clock, timer, release):
    """While one deadline's callback blocks, another deadline fires and its callback runs."""
    first = CancelSource(timeout=1, timer=timer)
    second = CancelSource(timeout=2, timer=timer)
    started, fired = threading.Event(), threading.Event()
    first.token.on_cancel(blocker(release, started))
    second.token.on_cancel(fired.set)
    clock.advance(1)
    firing = in_thread(timer.fire_due)  # the timer thread's part
    firing.join(JOIN)
    assert True is started.wait(JOIN)
    clock.advance(1)
    timer.fire_due()
    expected = (False, True, DEADLINE_EXCEEDED, False)
    assert expected == (firing.is_alive(), fired.wait(JOIN), second.token.reason, release.is_set())


@pytest.mark.realtime
def test_realtime_deadline_callbacks_never_run_on_the_timer_thread(release):
    """On a real timer a deadline's blocked callback neither runs on nor holds up the timer."""
    timer = DeadlineTimer()
    first = CancelSource(timeout=0.02, timer=timer)
    second = CancelSource(timeout=0.1, timer=timer)
    started, fired = threading.Event(), threading.Event()
    names: list[str] = []
    first.token.on_cancel(lambda: names.append(threading.current_thread().name))
    first.token.on_cancel(blocker(release, started))
    second.token.on_cancel(fired.set)
    expected = (True, True, False, [True])
    assert expected == (
        started.wait(5.0),
        fired.wait(5.0),
        release.is_set(),
        [n.startswith(CALLBACK_THREAD) for n in names],
    )


BASE_EXCEPTIONS = [SystemExit(3), KeyboardInterrupt(), Cancelled("inner")]


def raising_tree(
    error: BaseException, root: CancelSource
) -> tuple[CancelSource, list[str], Callable[[], None]]:
    """A child of ``root``; ``root``'s first callback raises ``error``, then both record."""
    child = CancelSource(root.token)
    calls: list[str] = []

    def bad() -> None:
        raise error

    root.token.on_cancel(bad)
    root.token.on_cancel(lambda: calls.append("root"))
    child.token.on_cancel(lambda: calls.append("child"))
    return child, calls, bad


@pytest.mark.parametrize("error", BASE_EXCEPTIONS, ids=lambda e: type(e).__name__)
def test_deadline_callback_raising_a_base_exception_is_logged(clock, timer, log_events, error):
    """A deadline callback's BaseException is logged; the tree and the other callbacks finish."""
    child, calls, bad = raising_tree(error, CancelSource(timeout=1, timer=timer))
    clock.advance(1)
    escaped: BaseException | None = None
    try:
        timer.fire_due()
    except BaseException as e:
        escaped = e
    idle()
    errors = [e for e in log_events if e["event"] == "cancel callback raised"]
    expected = (None, DEADLINE_EXCEEDED, ["child", "root"], [repr(bad)], [True])
    assert expected == (
        escaped,
        child.token.reason,
        sorted(calls),
        [e["callback"] for e in errors],
        [e.get("exc_info") for e in errors],
    )


@pytest.mark.realtime
@pytest.mark.parametrize("error", BASE_EXCEPTIONS, ids=lambda e: type(e).__name__)
def test_realtime_timer_survives_a_raising_deadline_callback(log_events, error):
    """A deadline callback raising a BaseException leaves the timer running: a later one fires."""
    timer = DeadlineTimer()
    first = CancelSource(timeout=0.02, timer=timer)
    second = CancelSource(timeout=0.15, timer=timer)
    fired = threading.Event()

    def bad() -> None:
        raise error

    first.token.on_cancel(bad)
    second.token.on_cancel(fired.set)
    assert True is fired.wait(5.0)
    idle()
    expected = (DEADLINE_EXCEEDED, True)
    assert expected == (second.token.reason, timer._thread is not None and timer._thread.is_alive())


@pytest.mark.realtime
def test_realtime_timer_loop_survives_its_own_error(log_events):
    """An error inside the timer's loop (its clock failing once) is logged; deadlines still fire."""
    failures = [RuntimeError("clock broke")]

    def clock() -> float:
        if failures and threading.current_thread().name == "lifecycle-deadlines":
            raise failures.pop()
        return time.monotonic()

    timer = DeadlineTimer(clock)
    source = CancelSource(timeout=0.05, timer=timer)
    assert True is source.token.wait(5.0)
    idle()
    errors = [e for e in log_events if e["event"] == "deadline timer failed; it keeps running"]
    expected: tuple[list[RuntimeError], str, int, list[bool]] = ([], DEADLINE_EXCEEDED, 1, [True])
    assert expected == (
        failures,
        source.token.reason,
        len(errors),
        [e.get("exc_info") for e in errors],
    )


# -- a BaseException on the user's own cancel ----------------------------------------


EXITS = [SystemExit(3), KeyboardInterrupt()]


@pytest.mark.parametrize("error", EXITS, ids=lambda e: type(e).__name__)
def test_user_cancel_finishes_the_tree_then_reraises_exit(log_events, error):
    """A callback's SystemExit/KeyboardInterrupt leaves a user's cancel() once all else ran."""
    root = CancelSource()
    child, calls, _ = raising_tree(error, root)
    with pytest.raises(type(error)):
        root.cancel("stop")
    expected = ("stop", ["child", "root"], 1)
    assert expected == (
        child.token.reason,
        sorted(calls),
        sum(e["event"] == "cancel callback raised" for e in log_events),
    )


def test_user_cancel_logs_a_callbacks_cancelled_without_raising_it(log_events):
    """Cancelled raised by a callback of a user's cancel() is logged, not raised into the caller."""
    root = CancelSource()
    child = CancelSource(root.token)
    calls: list[str] = []
    root.token.on_cancel(root.token.raise_if_cancelled)
    child.token.on_cancel(lambda: calls.append("child"))
    root.cancel("stop")
    expected = (["child"], "stop", ["cancel callback raised"])
    assert expected == (calls, child.token.reason, [e["event"] for e in log_events])


def test_a_failing_callback_is_a_stdlib_record_without_structlog(caplog):
    """Without structlog configured, a failing callback is a "lifecycle" logging record."""
    structlog.reset_defaults()  # not configured: the library logs through stdlib logging
    source = CancelSource()
    source.token.on_cancel(functools.partial(operator.truediv, 1, 0))
    with caplog.at_level(logging.ERROR, logger="lifecycle"):
        source.cancel("stop")
    records = [
        (r.name, r.levelno, r.getMessage().split()[0], type(r.exc_info[1]).__name__)
        for r in caplog.records
        if r.exc_info
    ]
    expected = [("lifecycle", logging.ERROR, "cancel", "ZeroDivisionError")]
    assert expected == records


def test_a_callback_raising_recursion_error_from_c_is_logged_like_any_failure(log_events):
    """A C callable that raises RecursionError itself is logged; the cancel goes on and returns."""
    nested: list[object] = []
    for _ in range(100_000):
        nested = [nested]
    source = CancelSource()
    calls: list[str] = []
    source.token.on_cancel(functools.partial(repr, nested))  # too deep for repr
    source.token.on_cancel(functools.partial(calls.append, "next"))
    source.cancel("stop")
    expected = (["next"], ["cancel callback raised"])
    assert expected == (calls, [e["event"] for e in log_events])


def test_on_cancel_on_a_cancelled_token_logs_a_raised_cancelled(log_events):
    """A callback run at registration that raises Cancelled is logged, not raised."""
    source = CancelSource()
    source.cancel("gone")
    detach = source.token.on_cancel(source.token.raise_if_cancelled)
    expected = (False, ["cancel callback raised"])
    assert expected == (detach(), [e["event"] for e in log_events])


# -- registrations keep their token alive ---------------------------------------------


def test_dropped_linked_token_with_a_callback_still_fires():
    """A linked token held only by its registration fires when an input is cancelled."""
    a, b = CancelSource(), CancelSource()
    calls: list[str | None] = []
    token = CancelSource.linked(a.token, b.token).token
    token.on_cancel(lambda: calls.append("fired"))
    ref = weakref.ref(token)
    del token
    gc.collect()
    a.cancel("a")
    expected = (["fired"], True, 0)
    assert expected == (
        calls,
        collected(ref),  # it fired: b no longer holds it
        0 if b.token._children is None else len(b.token._children),
    )


def test_dropped_child_with_a_callback_still_fires():
    """A child held only by its registration fires when its parent is cancelled in background."""
    parent = CancelSource()
    fired = threading.Event()
    CancelSource(parent.token).token.on_cancel(fired.set)
    gc.collect()
    cancel_in_background(parent, "shutdown")
    assert True is fired.wait(JOIN)
    idle()


def test_dropped_grandchild_fires_through_a_dropped_middle():
    """A registration pins the whole chain up to a live ancestor."""
    root = CancelSource()
    calls: list[str] = []
    CancelSource(CancelSource(root.token).token).token.on_cancel(lambda: calls.append("fired"))
    gc.collect()
    root.cancel("bye")
    expected = ["fired"]
    assert expected == calls


def test_dropped_deadline_watchdog_with_a_callback_still_fires(clock, timer):
    """A deadline-only source dropped with a registration fires at its deadline."""
    fired = threading.Event()
    CancelSource(timeout=5, timer=timer).token.on_cancel(fired.set)
    gc.collect()
    clock.advance(5)
    timer.fire_due()
    assert True is fired.wait(JOIN)
    idle()


def test_dropped_child_of_a_dropped_deadline_watchdog_still_fires(clock, timer):
    """The timer holds a dropped deadline source while a dropped child of it has a registration."""
    fired = threading.Event()
    CancelSource(CancelSource(timeout=5, timer=timer).token).token.on_cancel(fired.set)
    gc.collect()
    clock.advance(5)
    timer.fire_due()
    assert True is fired.wait(JOIN)
    idle()


def test_detaching_the_last_callback_unpins_a_child():
    """After its last callback is detached a dropped child is collected and leaves its parent."""
    parent = CancelSource()
    token = CancelSource(parent.token).token
    detaches = [token.on_cancel(lambda: None), on_cancel_inline(token, lambda: None)]
    ref = weakref.ref(token)
    del token  # the detach functions hold their token weakly
    assert False is collected(ref)
    assert True is detaches[0]()
    assert False is collected(ref)  # one registration left
    assert True is detaches[1]()
    expected = (True, 0)
    assert expected == (
        collected(ref),
        0 if parent.token._children is None else len(parent.token._children),
    )


def test_detach_of_a_registration_whose_token_was_collected():
    """A dropped root with a registration can never fire: it is collected; detach says True once."""
    token = CancelSource().token
    calls: list[int] = []
    detach = token.on_cancel(lambda: calls.append(1))
    ref = weakref.ref(token)
    del token
    expected: tuple[bool, bool, bool, list[int]] = (True, True, False, [])
    assert expected == (collected(ref), detach(), detach(), calls)


def test_detaching_unpins_the_middle_of_a_chain():
    """Detaching a grandchild's callback lets the dropped middle and the grandchild go."""
    root = CancelSource()
    middle = CancelSource(root.token).token
    grandchild = CancelSource(middle).token
    detach = grandchild.on_cancel(lambda: None)
    refs = [weakref.ref(middle), weakref.ref(grandchild)]
    del middle, grandchild
    before = [collected(r) for r in refs]
    detach()
    del detach
    expected = ([False, False], [True, True])
    assert expected == (before, [collected(r) for r in refs])


def test_detaching_unpins_a_deadline_watchdog(timer):
    """A dropped deadline source whose callback was detached is collected before its deadline."""
    token = CancelSource(timeout=5, timer=timer).token
    detach = token.on_cancel(lambda: None)
    ref = weakref.ref(token)
    del token
    assert False is collected(ref)
    detach()
    del detach
    assert True is collected(ref)


def test_a_fired_deadline_unpins_its_token(clock, timer):
    """Once its deadline has fired and its callback ran, a dropped token is collected."""
    fired = threading.Event()
    token = CancelSource(timeout=1, timer=timer).token
    token.on_cancel(fired.set)
    ref = weakref.ref(token)
    del token
    clock.advance(1)
    timer.fire_due()
    assert True is fired.wait(JOIN)
    idle()
    assert True is collected(ref)


def test_closing_a_child_with_callbacks_unpins_it():
    """A child closed with its callbacks still registered runs them and is not held any more."""
    parent = CancelSource()
    calls: list[int] = []
    with CancelSource(parent.token) as scope:
        scope.token.on_cancel(lambda: calls.append(1))
        ref = weakref.ref(scope.token)
    del scope
    expected = ([1], True, None)
    assert expected == (calls, collected(ref), parent.token._pinned)


def test_children_without_registrations_stay_weak_under_a_pinned_parent():
    """Children with no (or only detached) registrations are not held, even by a pinned parent."""
    root = CancelSource()
    parent = CancelSource(root.token)
    parent.token.on_cancel(lambda: None)  # parent is pinned by root
    for i in range(10_000):
        child = CancelSource(parent.token)
        if i % 2:
            child.token.on_cancel(lambda: None)()
    del child
    gc.collect()
    expected = (0, 1)
    assert expected == (
        0 if parent.token._children is None else len(parent.token._children),
        len(root.token._pinned or ()),
    )
