"""Unit tests of `lifecycle._core.tokens`: sources, tokens, deadlines, scopes."""

from __future__ import annotations

import asyncio
import functools
import gc
import math
import os
import signal
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable

import pytest
import structlog

from lifecycle import (
    DEADLINE_EXCEEDED,
    Cancelled,
    CancelSource,
    CancelToken,
    DeadlineTimer,
    cancel_scope,
    current_token,
    use_token,
)
from lifecycle._core import tokens as _tokens
from tests.fakes import FakeClock

JOIN = 10.0  # bound on every join / wait that is expected to finish at once


@pytest.fixture
def timer(clock: FakeClock) -> DeadlineTimer:
    """A deadline timer on the fake clock that fires only on ``fire_due()``."""
    return DeadlineTimer(clock, threaded=False)


def children_of(token: CancelToken) -> int:
    """How many children a token currently holds (its registration set)."""
    return 0 if token._children is None else len(token._children)


def in_thread(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


# -- propagation ------------------------------------------------------------


def test_new_token_is_not_cancelled_and_has_no_reason():
    """A new token is not cancelled, has no reason and no deadline."""
    token = CancelSource().token
    expected = (False, None, None, None)
    assert expected == (
        token.cancelled,
        token.reason,
        token.deadline,
        token.remaining(),
    )


def test_cancel_sets_cancelled_and_reason():
    """Cancelling a source marks its token cancelled with the given reason."""
    source = CancelSource()
    source.cancel("shutdown")
    expected = (True, "shutdown")
    assert expected == (source.token.cancelled, source.token.reason)


def test_cancel_default_reason():
    """The default reason of cancel() is "cancelled"."""
    source = CancelSource()
    source.cancel()
    expected = "cancelled"
    assert expected == source.token.reason


def test_first_reason_wins():
    """A second cancel is a no-op: the first reason stays."""
    source = CancelSource()
    source.cancel("first")
    source.cancel("second")
    expected = "first"
    assert expected == source.token.reason


def test_child_inherits_parent_reason():
    """Cancelling a parent cancels its child with the parent's reason."""
    parent = CancelSource()
    child = CancelSource(parent.token)
    parent.cancel("shutdown")
    expected = (True, "shutdown")
    assert expected == (child.token.cancelled, child.token.reason)


def test_grandchild_inherits_root_reason():
    """Cancellation reaches every descendant, with the root's reason."""
    root = CancelSource()
    grandchild = CancelSource(CancelSource(root.token).token)
    root.cancel("bye")
    expected = "bye"
    assert expected == grandchild.token.reason


def test_child_born_under_cancelled_parent_is_cancelled():
    """A child created under a cancelled parent is born cancelled with its reason."""
    parent = CancelSource()
    parent.cancel("gone")
    child = CancelSource(parent.token)
    expected = (True, "gone")
    assert expected == (child.token.cancelled, child.token.reason)


def test_child_cancel_does_not_reach_parent_or_sibling():
    """Cancelling a child leaves its parent and siblings alone."""
    parent = CancelSource()
    child = CancelSource(parent.token)
    sibling = CancelSource(parent.token)
    child.cancel()
    expected = (False, False)
    assert expected == (parent.token.cancelled, sibling.token.cancelled)


def test_child_keeps_own_reason_when_parent_cancelled_later():
    """A child cancelled first keeps its own reason when the parent follows."""
    parent = CancelSource()
    child = CancelSource(parent.token)
    child.cancel("own")
    parent.cancel("parent")
    expected = "own"
    assert expected == child.token.reason


def test_deep_chain_cancels_without_recursion_error():
    """A chain deeper than the recursion limit is cancelled without RecursionError."""
    root = CancelSource()
    token = root.token
    sources = []
    for _ in range(sys.getrecursionlimit() * 3):
        sources.append(CancelSource(token))
        token = sources[-1].token
    root.cancel("deep")
    expected = "deep"
    assert expected == token.reason


def test_linked_cancelled_by_any_input_with_its_reason():
    """A linked source is cancelled when any input is, with that input's reason."""
    a, b = CancelSource(), CancelSource()
    linked = CancelSource.linked(a.token, b.token)
    b.cancel("b went away")
    expected = (True, "b went away", False)
    assert expected == (
        linked.token.cancelled,
        linked.token.reason,
        a.token.cancelled,
    )


def test_linked_not_cancelled_while_inputs_live():
    """A linked source stays live while none of its inputs is cancelled."""
    a, b = CancelSource(), CancelSource()
    linked = CancelSource.linked(a.token, b.token)
    assert False is linked.token.cancelled


def test_linked_born_cancelled_when_an_input_is():
    """A linked source over an already cancelled input is born cancelled with its reason."""
    a, b = CancelSource(), CancelSource()
    b.cancel("early")
    linked = CancelSource.linked(a.token, b.token)
    expected = "early"
    assert expected == linked.token.reason


def test_linked_first_cancelled_input_wins():
    """When two inputs of a linked source are cancelled in turn, the first one's reason wins."""
    a, b = CancelSource(), CancelSource()
    linked = CancelSource.linked(a.token, b.token)
    b.cancel("b first")
    a.cancel("a second")
    expected = "b first"
    assert expected == linked.token.reason


def test_linked_cancel_detaches_from_every_input():
    """A cancelled linked token is removed from every input's children."""
    a, b = CancelSource(), CancelSource()
    linked = CancelSource.linked(a.token, b.token)
    a.cancel()
    expected = (0, 0)
    assert expected == (children_of(a.token), children_of(b.token))
    del linked


def test_cancelled_child_is_removed_from_parent():
    """A cancelled child no longer weighs on its parent's child set."""
    parent = CancelSource()
    child = CancelSource(parent.token)
    child.cancel()
    expected = 0
    assert expected == children_of(parent.token)


def test_token_cannot_be_constructed_directly():
    """CancelToken() is refused: tokens come from a CancelSource."""
    with pytest.raises(TypeError, match="CancelSource"):
        CancelToken()


# -- context manager, close, garbage collection ----------------------------


def test_with_cancels_on_exit_with_reason_closed():
    """Leaving a `with CancelSource()` block cancels it with reason "closed"."""
    with CancelSource() as source:
        assert False is source.token.cancelled
    expected = "closed"
    assert expected == source.token.reason


def test_with_cancels_on_exit_by_exception():
    """Leaving the block by an exception also cancels the source."""
    with pytest.raises(KeyError), CancelSource() as source:
        raise KeyError("boom")
    assert True is source.token.cancelled


def test_with_detaches_from_parent():
    """Leaving the block detaches the child: the parent's child set shrinks back."""
    parent = CancelSource()
    with CancelSource(parent.token):
        inside = children_of(parent.token)
    expected = (1, 0, False)
    assert expected == (inside, children_of(parent.token), parent.token.cancelled)


def test_many_with_blocks_do_not_accumulate_children():
    """Thousands of closed children leave the parent's child set empty."""
    parent = CancelSource()
    for _ in range(5000):
        with CancelSource(parent.token):
            pass
    expected = 0
    assert expected == children_of(parent.token)


def test_close_keeps_an_earlier_reason():
    """Closing an already cancelled source keeps the original reason."""
    source = CancelSource()
    source.cancel("first")
    source.close()
    expected = "first"
    assert expected == source.token.reason


def test_close_cancels_children_with_closed():
    """Closing a source cancels its children with reason "closed"."""
    parent = CancelSource()
    child = CancelSource(parent.token)
    parent.close()
    expected = "closed"
    assert expected == child.token.reason


def test_garbage_collected_child_leaves_parent():
    """A child dropped without closing is collected and leaves its parent's set."""
    parent = CancelSource()
    child = CancelSource(parent.token)
    ref = weakref.ref(child.token)
    del child
    gc.collect()
    expected = (None, 0)
    assert expected == (ref(), children_of(parent.token))


def test_garbage_collected_child_with_detached_callback_leaves_parent():
    """A dropped child that had a (detached) callback and a waiter event is still collected."""
    parent = CancelSource()
    child = CancelSource(parent.token)
    child.token.on_cancel(lambda: None)()
    child.token.wait(0)
    ref = weakref.ref(child.token)
    del child
    gc.collect()
    expected = (None, 0)
    assert expected == (ref(), children_of(parent.token))


def test_parent_does_not_keep_child_alive():
    """A parent holds its children weakly: many dropped children all go away."""
    parent = CancelSource()
    refs = [weakref.ref(CancelSource(parent.token).token) for _ in range(1000)]
    gc.collect()
    expected = (0, 0)
    assert expected == (sum(r() is not None for r in refs), children_of(parent.token))


# -- on_cancel --------------------------------------------------------------


def test_on_cancel_runs_once_on_cancel():
    """A callback runs once when the token is cancelled, not again on a second cancel."""
    source = CancelSource()
    calls = []
    source.token.on_cancel(lambda: calls.append(1))
    source.cancel()
    source.cancel()
    expected = [1]
    assert expected == calls


def test_on_cancel_does_not_run_before_cancel():
    """A callback does not run while the token is live."""
    source = CancelSource()
    calls = []
    source.token.on_cancel(lambda: calls.append(1))
    expected: list[int] = []
    assert expected == calls


def test_on_cancel_runs_in_registration_order():
    """Callbacks of one token run in the order they were registered."""
    source = CancelSource()
    calls: list[int] = []
    for i in range(5):
        source.token.on_cancel(functools.partial(calls.append, i))
    source.cancel()
    expected = [0, 1, 2, 3, 4]
    assert expected == calls


def test_on_cancel_sees_the_cancelled_state():
    """When a callback runs, the token already reads cancelled with its reason."""
    source = CancelSource()
    seen = []
    source.token.on_cancel(lambda: seen.append((source.token.cancelled, source.token.reason)))
    source.cancel("why")
    expected = [(True, "why")]
    assert expected == seen


def test_on_cancel_runs_at_once_when_already_cancelled():
    """Registering on a cancelled token runs the callback before on_cancel returns."""
    source = CancelSource()
    source.cancel()
    calls = []
    source.token.on_cancel(lambda: calls.append(1))
    expected = [1]
    assert expected == calls


def test_detach_of_already_fired_registration_returns_false():
    """The detach of a callback that ran at registration returns False."""
    source = CancelSource()
    source.cancel()
    detach = source.token.on_cancel(lambda: None)
    assert False is detach()


def test_detach_before_cancel_returns_true_and_callback_never_runs():
    """Detaching in time returns True and the callback never runs."""
    source = CancelSource()
    calls = []
    detach = source.token.on_cancel(lambda: calls.append(1))
    detached = detach()
    source.cancel()
    expected: tuple[bool, list[int]] = (True, [])
    assert expected == (detached, calls)


def test_second_detach_returns_false():
    """Detaching twice: only the first detach reports True."""
    source = CancelSource()
    detach = source.token.on_cancel(lambda: None)
    expected = (True, False)
    assert expected == (detach(), detach())


def test_detach_after_callback_ran_returns_false():
    """Detaching after the callback ran returns False."""
    source = CancelSource()
    detach = source.token.on_cancel(lambda: None)
    source.cancel()
    assert False is detach()


def test_detach_during_cancel_is_too_late():
    """A detach from an earlier callback is too late: it returns False and the later one runs."""
    source = CancelSource()
    calls = []
    results = []
    detaches: list[Callable[[], bool]] = []
    source.token.on_cancel(lambda: results.append(detaches[0]()))
    detaches.append(source.token.on_cancel(lambda: calls.append("late")))
    source.cancel()
    expected = ([False], ["late"])
    assert expected == (results, calls)


def test_detach_leaves_no_registration_behind():
    """Registering and detaching many callbacks leaves the token's callback table empty."""
    source = CancelSource()
    for _ in range(1000):
        source.token.on_cancel(lambda: None)()
    expected = 0
    assert expected == len(source.token._callbacks)


def test_on_cancel_runs_for_child_when_parent_cancelled():
    """A child's callbacks run when its parent is cancelled."""
    parent = CancelSource()
    child = CancelSource(parent.token)
    calls = []
    child.token.on_cancel(lambda: calls.append(child.token.reason))
    parent.cancel("parent")
    expected = ["parent"]
    assert expected == calls


def test_on_cancel_rejects_non_callable():
    """on_cancel() with something not callable raises TypeError."""
    with pytest.raises(TypeError, match="callable"):
        CancelSource().token.on_cancel(42)  # type: ignore[arg-type]


def test_raising_callback_is_logged_and_others_still_run(log_events):
    """A callback that raises is logged as an error and the other callbacks still run."""
    calls = []

    def bad() -> None:
        raise RuntimeError("callback failed")

    source = CancelSource()
    source.token.on_cancel(lambda: calls.append("before"))
    source.token.on_cancel(bad)
    source.token.on_cancel(lambda: calls.append("after"))
    source.cancel()
    expected = (["before", "after"], ["error"], [True])
    assert expected == (
        calls,
        [e["log_level"] for e in log_events],
        [e.get("exc_info") for e in log_events],
    )


def test_raising_callback_is_logged_on_the_lifecycle_logger(log_events):
    """The error of a raising callback goes to the structlog logger named "lifecycle"."""
    names = []

    def factory(*args: object) -> object:
        names.append(args)
        return structlog.ReturnLogger()

    structlog.configure(logger_factory=factory)
    source = CancelSource()
    source.token.on_cancel(lambda: 1 / 0)
    source.cancel()
    expected = ([("lifecycle",)], 1)
    assert expected == (names, len(log_events))


def test_raising_callback_does_not_stop_child_cancellation(log_events):
    """A raising callback on a parent does not stop its children from being cancelled."""
    parent = CancelSource()
    child = CancelSource(parent.token)
    parent.token.on_cancel(lambda: 1 / 0)
    parent.cancel("p")
    expected = ("p", 1)
    assert expected == (child.token.reason, len(log_events))


def test_callbacks_run_outside_the_lock():
    """While a callback runs, another thread can create and cancel tokens (no lock held)."""
    source = CancelSource()
    done = threading.Event()

    def other_thread_work() -> None:
        with CancelSource() as other:
            other.cancel()
        done.set()

    def callback() -> None:
        in_thread(other_thread_work).join(JOIN)

    source.token.on_cancel(callback)
    source.cancel()
    assert True is done.is_set()


def test_callback_may_cancel_other_tokens():
    """A callback can cancel another source and register callbacks re-entrantly."""
    first, second = CancelSource(), CancelSource()
    calls = []
    first.token.on_cancel(lambda: second.cancel("chained"))
    first.token.on_cancel(lambda: first.token.on_cancel(lambda: calls.append("nested")))
    first.cancel()
    expected = ("chained", ["nested"])
    assert expected == (second.token.reason, calls)


# -- deadlines (fake clock, non-threaded timer) -----------------------------


def test_deadline_is_clock_plus_timeout(clock, timer):
    """A token's deadline is the clock reading at creation plus the timeout."""
    token = CancelSource(timeout=5, timer=timer).token
    assert clock() + 5 == token.deadline


def test_deadline_fires_with_reason_deadline_exceeded(clock, timer):
    """Once the deadline passes and the timer fires, the reason is "deadline exceeded"."""
    source = CancelSource(timeout=5, timer=timer)
    clock.advance(5)
    timer.fire_due()
    expected = (True, "deadline exceeded")
    assert expected == (source.token.cancelled, source.token.reason)


def test_deadline_exceeded_constant():
    """The exported DEADLINE_EXCEEDED constant is the deadline reason."""
    expected = "deadline exceeded"
    assert expected == DEADLINE_EXCEEDED


def test_deadline_does_not_fire_early(clock, timer):
    """Just before the deadline the timer fires nothing."""
    source = CancelSource(timeout=5, timer=timer)
    clock.advance(4.999)
    timer.fire_due()
    assert False is source.token.cancelled


def test_cancelled_does_not_read_the_clock(clock, timer):
    """`cancelled` is a plain read: past the deadline it stays False until the timer fires."""
    source = CancelSource(timeout=5, timer=timer)
    clock.advance(10)
    before = source.token.cancelled
    timer.fire_due()
    expected = (False, True)
    assert expected == (before, source.token.cancelled)


def test_cancelled_read_never_calls_the_clock():
    """Reading `cancelled` on a token with a deadline never calls the clock."""
    calls = []

    def counting_clock() -> float:
        calls.append(1)
        return 1000.0

    source = CancelSource(timeout=5, timer=DeadlineTimer(counting_clock, threaded=False))
    calls.clear()
    for _ in range(100):
        assert False is source.token.cancelled
    expected: list[int] = []
    assert expected == calls


def test_fire_due_returns_next_deadline(clock, timer):
    """fire_due() returns the next pending deadline, or None when nothing is pending."""
    expected = clock() + 5
    CancelSource(timeout=5, timer=timer)
    first = timer.fire_due()
    clock.advance(5)
    assert (expected, None) == (first, timer.fire_due())


def test_deadline_fires_callbacks_and_wakes_a_thread_waiter(clock, timer):
    """A fired deadline runs the callbacks and wakes a thread blocked in wait()."""
    source = CancelSource(timeout=5, timer=timer)
    calls = []
    source.token.on_cancel(lambda: calls.append(source.token.reason))
    results = []
    waiter = in_thread(lambda: results.append(source.token.wait(JOIN)))
    clock.advance(5)
    timer.fire_due()
    waiter.join(JOIN)
    assert True is _tokens.wait_callbacks_idle(JOIN)
    expected = (False, [True], ["deadline exceeded"])
    assert expected == (waiter.is_alive(), results, calls)


def test_timeout_zero_is_born_cancelled(timer):
    """timeout=0 gives a token already cancelled with "deadline exceeded"."""
    token = CancelSource(timeout=0, timer=timer).token
    expected = (True, "deadline exceeded", 0)
    assert expected == (token.cancelled, token.reason, timer.pending())


def test_infinite_timeout_never_fires(clock, timer):
    """timeout=inf is accepted and never schedules or fires anything."""
    source = CancelSource(timeout=math.inf, timer=timer)
    clock.advance(1e9)
    timer.fire_due()
    expected = (False, 0)
    assert expected == (source.token.cancelled, timer.pending())


def test_explicit_cancel_before_deadline_keeps_its_reason(clock, timer):
    """A token cancelled before its deadline keeps its reason when the deadline passes."""
    source = CancelSource(timeout=5, timer=timer)
    calls = []
    source.token.on_cancel(lambda: calls.append(1))
    source.cancel("early")
    clock.advance(5)
    timer.fire_due()
    expected = ("early", [1])
    assert expected == (source.token.reason, calls)


def test_child_deadline_is_parent_deadline_when_earlier(clock, timer):
    """A child asking for a later deadline gets its parent's earlier one."""
    parent = CancelSource(timeout=5, timer=timer)
    child = CancelSource(parent.token, timeout=10)
    assert parent.token.deadline == child.token.deadline


def test_child_deadline_is_own_when_earlier(clock, timer):
    """A child asking for an earlier deadline than its parent's keeps its own."""
    parent = CancelSource(timeout=10, timer=timer)
    child = CancelSource(parent.token, timeout=3)
    assert clock() + 3 == child.token.deadline


def test_child_without_timeout_inherits_parent_deadline(clock, timer):
    """A child without a timeout has its parent's deadline."""
    parent = CancelSource(timeout=5, timer=timer)
    child = CancelSource(parent.token)
    assert parent.token.deadline == child.token.deadline


def test_child_earlier_deadline_fires_alone(clock, timer):
    """A child's own earlier deadline cancels the child only, not its parent."""
    parent = CancelSource(timeout=10, timer=timer)
    child = CancelSource(parent.token, timeout=3)
    clock.advance(3)
    timer.fire_due()
    expected = (DEADLINE_EXCEEDED, False)
    assert expected == (child.token.reason, parent.token.cancelled)


def test_child_reason_when_parent_deadline_fires(clock, timer):
    """A child whose parent's deadline fires gets reason "deadline exceeded"."""
    parent = CancelSource(timeout=5, timer=timer)
    child = CancelSource(parent.token, timeout=10)
    clock.advance(5)
    timer.fire_due()
    expected = (DEADLINE_EXCEEDED, DEADLINE_EXCEEDED)
    assert expected == (parent.token.reason, child.token.reason)


def test_grandchild_inherits_deadline_through_the_tree(clock, timer):
    """A grandchild without timeouts is cancelled when its grandparent's deadline fires."""
    root = CancelSource(timeout=5, timer=timer)
    grandchild = CancelSource(CancelSource(root.token).token)
    clock.advance(5)
    timer.fire_due()
    expected = DEADLINE_EXCEEDED
    assert expected == grandchild.token.reason


def test_child_inherits_timer_of_parent(clock, timer):
    """A child's own deadline runs on its parent's timer."""
    parent = CancelSource(timer=timer)
    child = CancelSource(parent.token, timeout=2)
    clock.advance(2)
    timer.fire_due()
    expected = DEADLINE_EXCEEDED
    assert expected == child.token.reason


def test_linked_deadline_is_earliest_of_inputs_and_own(clock, timer):
    """A linked token's deadline is the earliest of its inputs' and its own."""
    a = CancelSource(timeout=7, timer=timer)
    b = CancelSource(timeout=4, timer=timer)
    linked = CancelSource.linked(a.token, b.token, timeout=9)
    assert clock() + 4 == linked.token.deadline


def test_linked_own_deadline_fires(clock, timer):
    """A linked source with its own timeout is cancelled by it, inputs untouched."""
    a, b = CancelSource(timer=timer), CancelSource(timer=timer)
    linked = CancelSource.linked(a.token, b.token, timeout=3, timer=timer)
    clock.advance(3)
    timer.fire_due()
    expected = (DEADLINE_EXCEEDED, False, False)
    assert expected == (
        linked.token.reason,
        a.token.cancelled,
        b.token.cancelled,
    )


def test_linked_fires_with_an_input_deadline(clock, timer):
    """A linked source is cancelled with "deadline exceeded" when an input's deadline fires."""
    a = CancelSource(timer=timer)
    b = CancelSource(timeout=2, timer=timer)
    linked = CancelSource.linked(a.token, b.token, timeout=10)
    clock.advance(2)
    timer.fire_due()
    expected = DEADLINE_EXCEEDED
    assert expected == linked.token.reason


def test_remaining_counts_down(clock, timer):
    """remaining() is the time left until the deadline."""
    token = CancelSource(timeout=5, timer=timer).token
    clock.advance(2)
    expected = 3.0
    assert expected == token.remaining()


def test_remaining_never_negative(clock, timer):
    """remaining() is 0 once the deadline has passed, never negative."""
    token = CancelSource(timeout=5, timer=timer).token
    clock.advance(50)
    expected = 0.0
    assert expected == token.remaining()


def test_remaining_is_none_without_deadline():
    """remaining() is None for a token without a deadline."""
    assert None is CancelSource().token.remaining()


def test_raise_if_cancelled_silent_while_live(clock, timer):
    """raise_if_cancelled() returns quietly just before the deadline."""
    token = CancelSource(timeout=5, timer=timer).token
    clock.advance(4.999)
    token.raise_if_cancelled()
    assert False is token.cancelled


def test_raise_if_cancelled_exact_at_deadline(clock, timer):
    """raise_if_cancelled() raises at the deadline itself, before the timer fires."""
    token = CancelSource(timeout=5, timer=timer).token
    clock.advance(5)
    with pytest.raises(Cancelled) as caught:
        token.raise_if_cancelled()
    expected = (DEADLINE_EXCEEDED, True)
    assert expected == (caught.value.reason, token.cancelled)


def test_raise_if_cancelled_exact_at_inherited_deadline(clock, timer):
    """raise_if_cancelled() on a child is exact at its parent's deadline too."""
    parent = CancelSource(timeout=5, timer=timer)
    child = CancelSource(parent.token)
    clock.advance(5)
    with pytest.raises(Cancelled, match="deadline exceeded"):
        child.token.raise_if_cancelled()


def test_raise_if_cancelled_carries_reason():
    """raise_if_cancelled() raises Cancelled carrying the token's reason."""
    source = CancelSource()
    source.cancel("stop now")
    with pytest.raises(Cancelled) as caught:
        source.token.raise_if_cancelled()
    expected = "stop now"
    assert expected == caught.value.reason


def test_cancelled_is_not_an_exception():
    """Cancelled is a BaseException, so `except Exception` cannot swallow it."""
    expected = (True, False)
    assert expected == (
        issubclass(Cancelled, BaseException),
        issubclass(Cancelled, Exception),
    )


def test_timer_heap_bounded_when_tokens_cancelled_early(timer):
    """Tokens with timeouts cancelled early do not make the timer's heap grow without bound."""
    for _ in range(20_000):
        with CancelSource(timeout=60, timer=timer):
            pass
    assert timer.pending() < 1000


def test_timer_heap_bounded_with_live_tokens(timer):
    """Early-cancelled tokens are swept even while long-lived deadlines stay pending."""
    keep = [CancelSource(timeout=3600, timer=timer) for _ in range(300)]
    for _ in range(20_000):
        CancelSource(timeout=60, timer=timer).cancel()
    assert 300 <= timer.pending() < 2000
    del keep


def test_timer_fires_only_live_tokens_after_sweep(clock, timer):
    """After a sweep the pending deadlines still fire."""
    keep = CancelSource(timeout=100, timer=timer)
    for _ in range(2000):
        CancelSource(timeout=60, timer=timer).cancel()
    clock.advance(100)
    timer.fire_due()
    expected = (DEADLINE_EXCEEDED, 0)
    assert expected == (keep.token.reason, timer.pending())


def test_timer_lock_is_reentrant_for_signal_handlers(timer):
    """A cancel interrupting the timer's critical section (a signal handler) does not deadlock."""
    source = CancelSource(timeout=60, timer=timer)
    done = threading.Event()

    def interrupted() -> None:
        with timer._cond:  # the interrupted code holds the timer's lock
            source.cancel("signal")
        done.set()

    in_thread(interrupted).join(JOIN)
    assert True is done.is_set()


def test_child_registering_while_parent_cancelled_reentrantly():
    """A parent cancelled re-entrantly (a signal handler) while a child registers cancels it."""
    parent = CancelSource()

    class InterruptedSet(weakref.WeakSet):  # type: ignore[type-arg]
        def add(self, item: object) -> None:
            parent.cancel("signal")  # lands between the check and the insertion
            super().add(item)

    parent.token._children = InterruptedSet()
    child = CancelSource(parent.token)
    expected = (True, "signal")
    assert expected == (child.token.cancelled, child.token.reason)


def test_wait_not_stuck_when_cancelled_reentrantly(monkeypatch):
    """A cancel landing while wait() builds its event (a signal handler) still ends the wait."""
    source = CancelSource()
    real_event = threading.Event

    def interrupted_event() -> threading.Event:
        source.cancel("signal")  # lands between the check and the event's creation
        return real_event()

    monkeypatch.setattr(_tokens, "threading", types.SimpleNamespace(Event=interrupted_event))
    results = []
    waiter = in_thread(lambda: results.append(source.token.wait(5.0)))
    waiter.join(JOIN)
    expected = (False, [True])
    assert expected == (waiter.is_alive(), results)


# -- wait -------------------------------------------------------------------


def test_wait_returns_true_when_cancelled():
    """wait() on a cancelled token returns True at once."""
    source = CancelSource()
    source.cancel()
    assert True is source.token.wait(JOIN)


def test_wait_times_out_with_false():
    """wait(0) on a live token returns False at once."""
    assert False is CancelSource().token.wait(0)


def test_wait_woken_from_another_thread():
    """A thread blocked in wait() wakes with True when another thread cancels."""
    source = CancelSource()
    results = []
    started = threading.Event()

    def waiter() -> None:
        started.set()
        results.append(source.token.wait(60))

    thread = in_thread(waiter)
    started.wait(JOIN)
    source.cancel()
    thread.join(JOIN)
    expected = (False, [True])
    assert expected == (thread.is_alive(), results)


def test_wait_wakes_many_waiters():
    """One cancel wakes every thread waiting on the token."""
    source = CancelSource()
    results = []
    threads = [in_thread(lambda: results.append(source.token.wait(60))) for _ in range(8)]
    source.cancel()
    for thread in threads:
        thread.join(JOIN)
    expected = ([True] * 8, 0)
    assert expected == (results, sum(t.is_alive() for t in threads))


def test_wait_woken_by_parent_cancel():
    """A thread waiting on a child wakes when the parent is cancelled."""
    parent = CancelSource()
    child = CancelSource(parent.token)
    results = []
    thread = in_thread(lambda: results.append(child.token.wait(60)))
    parent.cancel()
    thread.join(JOIN)
    expected = [True]
    assert expected == results


# -- wait_async --------------------------------------------------------------


def test_wait_async_returns_true_when_cancelled():
    """await wait_async() on a cancelled token returns True."""
    source = CancelSource()
    source.cancel()
    assert True is asyncio.run(source.token.wait_async())


def test_wait_async_times_out_with_false():
    """wait_async(timeout) on a live token returns False when the timeout passes."""
    source = CancelSource()
    expected = (False, 0)
    assert expected == (asyncio.run(source.token.wait_async(0)), len(source.token._callbacks))


def test_wait_async_woken_from_same_loop():
    """A task in wait_async() wakes when another task cancels."""
    source = CancelSource()

    async def main() -> bool:
        waiter = asyncio.create_task(source.token.wait_async())
        await asyncio.sleep(0)
        source.cancel()
        return await asyncio.wait_for(waiter, JOIN)

    assert True is asyncio.run(main())


def test_wait_async_woken_from_another_thread():
    """A task in wait_async() wakes when a different thread cancels."""
    source = CancelSource()

    async def main() -> bool:
        waiter = asyncio.create_task(source.token.wait_async())
        await asyncio.sleep(0)  # the waiter is parked
        thread = in_thread(source.cancel)
        result = await asyncio.wait_for(waiter, JOIN)
        thread.join(JOIN)
        return result

    assert True is asyncio.run(main())


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_wait_async_woken_from_signal_handler():
    """A task in wait_async() wakes when a real signal handler cancels the source."""
    source = CancelSource()

    def handler(signum: int, frame: object) -> None:
        source.cancel("signal")

    async def main() -> bool:
        waiter = asyncio.create_task(source.token.wait_async())
        await asyncio.sleep(0)  # the waiter is parked
        os.kill(os.getpid(), signal.SIGUSR1)
        return await asyncio.wait_for(waiter, JOIN)

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        result = asyncio.run(main())
    finally:
        signal.signal(signal.SIGUSR1, old)
    expected = (True, "signal")
    assert expected == (result, source.token.reason)


def test_wait_async_uses_no_thread_per_waiter():
    """Many tasks waiting on tokens start no thread."""
    sources = [CancelSource() for _ in range(200)]

    async def main() -> tuple[int, list[bool]]:
        tasks = [asyncio.create_task(s.token.wait_async()) for s in sources]
        await asyncio.sleep(0)
        during = threading.active_count()
        for s in sources:
            s.cancel()
        return during, await asyncio.wait_for(asyncio.gather(*tasks), JOIN)

    before = threading.active_count()
    during, results = asyncio.run(main())
    assert (before, [True] * 200) == (during, results)


def test_wait_async_detaches_its_callback_when_task_cancelled():
    """A wait_async() ended by task.cancel() leaves no callback on the token."""
    source = CancelSource()

    async def main() -> None:
        waiter = asyncio.create_task(source.token.wait_async())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())
    expected = 0
    assert expected == len(source.token._callbacks)


def test_wait_async_woken_by_deadline(clock, timer):
    """A task in wait_async() wakes when the timer fires the token's deadline."""
    source = CancelSource(timeout=5, timer=timer)

    async def main() -> bool:
        waiter = asyncio.create_task(source.token.wait_async())
        await asyncio.sleep(0)
        clock.advance(5)
        timer.fire_due()
        return await asyncio.wait_for(waiter, JOIN)

    assert True is asyncio.run(main())


# -- current_token / use_token ----------------------------------------------


def test_current_token_outside_is_never_cancelled():
    """Outside any component current_token() is a live token without deadline."""
    token = current_token()
    expected = (True, False, None)
    assert expected == (
        isinstance(token, CancelToken),
        token.cancelled,
        token.deadline,
    )


def test_children_of_default_token_are_not_registered():
    """Children of the never-cancelled default token do not accumulate anywhere."""
    for _ in range(100):
        CancelSource(current_token())
    expected = 0
    assert expected == children_of(current_token())


def test_use_token_sets_and_restores():
    """use_token() makes a token current inside the block and restores the previous after."""
    outer = current_token()
    source = CancelSource()
    with use_token(source.token) as used:
        inside = current_token()
    assert (source.token, source.token, outer) == (used, inside, current_token())


def test_use_token_nests():
    """Nested use_token() blocks restore the enclosing token on exit."""
    a, b = CancelSource(), CancelSource()
    with use_token(a.token):
        with use_token(b.token):
            inner = current_token()
        after_inner = current_token()
    assert (b.token, a.token) == (inner, after_inner)


def test_use_token_restores_after_exception():
    """use_token() restores the previous token when the block raises."""
    outer = current_token()
    with pytest.raises(ValueError, match="x"), use_token(CancelSource().token):
        raise ValueError("x")
    assert outer is current_token()


def test_use_token_rejects_non_token():
    """use_token() with a source instead of a token raises TypeError."""
    with pytest.raises(TypeError, match="CancelToken"), use_token(CancelSource()):  # type: ignore[arg-type]
        pass


def test_current_token_isolated_between_threads():
    """A token made current in one thread is not seen by another thread, and vice versa."""
    main_source, thread_source = CancelSource(), CancelSource()
    seen = []

    def worker() -> None:
        seen.append(current_token())
        with use_token(thread_source.token):
            seen.append(current_token())

    with use_token(main_source.token):
        thread = in_thread(worker)
        thread.join(JOIN)
        in_main = current_token()
    assert (False, thread_source.token, main_source.token) == (
        seen[0] is main_source.token,
        seen[1],
        in_main,
    )


def test_current_token_isolated_between_tasks():
    """Tasks setting their own token each see only their own, across awaits."""
    sources = [CancelSource() for _ in range(3)]

    async def task(source: CancelSource) -> list[bool]:
        seen = []
        with use_token(source.token):
            for _ in range(3):
                await asyncio.sleep(0)
                seen.append(current_token() is source.token)
        return seen

    async def main() -> list[list[bool]]:
        return await asyncio.gather(*(task(s) for s in sources))

    expected = [[True] * 3] * 3
    assert expected == asyncio.run(main())


def test_task_inherits_current_token_of_its_creator():
    """A task created inside use_token() starts with that token current."""
    source = CancelSource()

    async def child() -> CancelToken:
        return current_token()

    async def main() -> CancelToken:
        with use_token(source.token):
            task = asyncio.create_task(child())
        return await task

    assert source.token is asyncio.run(main())


# -- cancel_scope ------------------------------------------------------------


def test_cancel_scope_raises_cancelled_when_token_fires():
    """A token cancelled while the block awaits ends the block with Cancelled(reason)."""
    source = CancelSource()
    reached = []

    async def main() -> None:
        async with cancel_scope(source.token):
            asyncio.get_running_loop().call_soon(source.cancel, "shutdown")
            await asyncio.sleep(60)
            reached.append("after sleep")

    with pytest.raises(Cancelled) as caught:
        asyncio.run(asyncio.wait_for(main(), JOIN))
    expected: tuple[str, list[str]] = ("shutdown", [])
    assert expected == (caught.value.reason, reached)


def test_cancel_scope_fired_from_another_thread():
    """A cancel from another thread interrupts the block with Cancelled."""
    source = CancelSource()

    async def main() -> str:
        try:
            async with cancel_scope(source.token):
                thread = in_thread(source.cancel, "from thread")
                await asyncio.sleep(60)
        except Cancelled as e:
            thread.join(JOIN)
            return e.reason
        return "not cancelled"

    expected = "from thread"
    assert expected == asyncio.run(asyncio.wait_for(main(), JOIN))


def test_cancel_scope_leaves_task_usable_after_cancelled():
    """After Cancelled leaves the scope the task has no pending cancellation."""
    source = CancelSource()

    async def main() -> tuple[int, str]:
        try:
            async with cancel_scope(source.token):
                asyncio.get_running_loop().call_soon(source.cancel)
                await asyncio.sleep(60)
        except Cancelled:
            pass
        await asyncio.sleep(0)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling(), "continued"

    expected = (0, "continued")
    assert expected == asyncio.run(main())


def test_cancel_scope_already_cancelled_token_skips_block():
    """Entering a scope on a cancelled token raises Cancelled before the block runs."""
    source = CancelSource()
    source.cancel("early")
    reached = []

    async def main() -> None:
        async with cancel_scope(source.token):
            reached.append(1)

    with pytest.raises(Cancelled, match="early"):
        asyncio.run(main())
    expected: list[int] = []
    assert expected == reached


def test_cancel_scope_normal_exit_detaches():
    """A block that completes returns normally and leaves no callback on the token."""
    source = CancelSource()

    async def main() -> str:
        async with cancel_scope(source.token):
            await asyncio.sleep(0)
        return "done"

    expected = ("done", 0)
    assert expected == (asyncio.run(main()), len(source.token._callbacks))


def test_cancel_scope_late_fire_after_exit_is_ignored():
    """A token fired after the block has exited does not cancel the task later."""
    source = CancelSource()

    async def main() -> str:
        async with cancel_scope(source.token):
            source.cancel()  # no await left in the block: the block completes
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return "survived"

    expected = "survived"
    assert expected == asyncio.run(main())


def test_cancel_scope_outer_task_cancel_propagates():
    """An outer task.cancel() inside the scope propagates as CancelledError, not Cancelled."""
    source = CancelSource()

    async def body() -> None:
        async with cancel_scope(source.token):
            await asyncio.sleep(60)

    async def main() -> type[BaseException] | None:
        task = asyncio.create_task(body())
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except BaseException as e:
            return type(e)
        return None

    assert asyncio.CancelledError is asyncio.run(main())


def test_cancel_scope_outer_cancel_wins_over_token():
    """When the token fires and the task is cancelled from outside, CancelledError wins."""
    source = CancelSource()

    async def body() -> None:
        async with cancel_scope(source.token):
            await asyncio.sleep(60)

    async def main() -> tuple[type[BaseException] | None, bool]:
        task = asyncio.create_task(body())
        await asyncio.sleep(0)
        source.cancel()
        task.cancel()
        try:
            await task
        except BaseException as e:
            return type(e), task.cancelled()
        return None, False

    assert (asyncio.CancelledError, True) == asyncio.run(main())


def test_cancel_scope_inside_timeout_keeps_both_apart():
    """An asyncio.timeout around the scope still raises TimeoutError, not Cancelled."""
    source = CancelSource()

    async def main() -> None:
        async with asyncio.timeout(0.01), cancel_scope(source.token):
            await asyncio.sleep(60)

    with pytest.raises(TimeoutError):
        asyncio.run(main())


def test_cancel_scope_rejects_non_token():
    """cancel_scope() with something that is not a token raises TypeError."""
    with pytest.raises(TypeError, match="CancelToken"):
        cancel_scope(CancelSource())  # type: ignore[arg-type]


# -- bad input ---------------------------------------------------------------


@pytest.mark.parametrize("value", [-1, -0.001, math.nan, -math.inf])
def test_bad_timeout_value_raises_value_error(value):
    """A negative or NaN timeout raises ValueError naming `timeout`."""
    with pytest.raises(ValueError, match="timeout"):
        CancelSource(timeout=value)


@pytest.mark.parametrize("value", ["1", True, [1], object()])
def test_bad_timeout_type_raises_type_error(value):
    """A timeout that is no number raises TypeError naming `timeout`."""
    with pytest.raises(TypeError, match="timeout"):
        CancelSource(timeout=value)


def test_linked_bad_timeout_raises_value_error():
    """linked() validates its timeout like CancelSource()."""
    with pytest.raises(ValueError, match="timeout"):
        CancelSource.linked(CancelSource().token, timeout=-1)


@pytest.mark.parametrize("value", [-1, math.nan])
def test_wait_bad_timeout_raises_value_error(value):
    """wait() with a negative or NaN timeout raises ValueError naming `timeout`."""
    with pytest.raises(ValueError, match="timeout"):
        CancelSource().token.wait(value)


def test_wait_async_bad_timeout_raises_type_error():
    """wait_async() with a non-number timeout raises TypeError naming `timeout`."""
    with pytest.raises(TypeError, match="timeout"):
        asyncio.run(CancelSource().token.wait_async("1"))  # type: ignore[arg-type]


def test_source_as_parent_raises_type_error():
    """Passing a source instead of its token as parent raises TypeError naming `parent`."""
    with pytest.raises(TypeError, match=r"parent.*source\.token"):
        CancelSource(CancelSource())  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["token", 1, object()])
def test_non_token_parent_raises_type_error(value):
    """A parent that is no token raises TypeError naming `parent`."""
    with pytest.raises(TypeError, match="parent"):
        CancelSource(value)


def test_linked_non_token_raises_type_error():
    """linked() with a non-token argument raises TypeError naming the argument."""
    with pytest.raises(TypeError, match="argument 1"):
        CancelSource.linked(CancelSource().token, "x")  # type: ignore[arg-type]


def test_cancel_non_str_reason_raises_type_error():
    """cancel() with a reason that is no str raises TypeError naming `reason`."""
    with pytest.raises(TypeError, match="reason"):
        CancelSource().cancel(42)  # type: ignore[arg-type]


# -- real time (default shared timer) ----------------------------------------


@pytest.mark.realtime
def test_realtime_deadline_fires_without_polling():
    """With the shared timer a deadline runs callbacks and wakes waiters with nobody polling."""
    source = CancelSource(timeout=0.05)
    fired = threading.Event()
    source.token.on_cancel(fired.set)
    start = time.monotonic()
    assert True is fired.wait(5.0)
    elapsed = time.monotonic() - start
    expected = (True, DEADLINE_EXCEEDED, True)
    assert expected == (
        source.token.cancelled,
        source.token.reason,
        0.04 <= elapsed < 2.5,
    )


@pytest.mark.realtime
def test_realtime_many_deadlines_fire_in_order_callbacks_off_the_timer():
    """Many deadlines fire in deadline order; their callbacks run on callback threads."""
    order: list[tuple[int, str]] = []

    def record(i: int) -> None:
        order.append((i, threading.current_thread().name))

    done = threading.Event()
    sources = []
    for i, timeout in enumerate([0.09, 0.03, 0.06, 0.12]):
        source = CancelSource(timeout=timeout)
        source.token.on_cancel(functools.partial(record, i))
        sources.append(source)
    sources[3].token.on_cancel(done.set)
    assert True is done.wait(5.0)
    assert ([1, 2, 0, 3], {True}) == (
        [i for i, _ in order],
        {name.startswith("lifecycle-callbacks") for _, name in order},
    )


@pytest.mark.realtime
def test_realtime_deadline_wakes_wait_async():
    """With the shared timer a deadline wakes a task in wait_async()."""
    source = CancelSource(timeout=0.05)

    async def main() -> bool:
        return await asyncio.wait_for(source.token.wait_async(), 5.0)

    expected = (True, DEADLINE_EXCEEDED)
    assert expected == (asyncio.run(main()), source.token.reason)


def test_absolute_deadline_is_kept_exactly(clock, timer):
    """deadline= sets the token's deadline to that very clock value."""
    source = CancelSource(deadline=clock() + 7.5, timer=timer)
    assert source.token.deadline == clock() + 7.5
    clock.advance(7.5)
    timer.fire_due()
    assert source.token.reason == DEADLINE_EXCEEDED


def test_earlier_of_timeout_and_deadline_wins(clock, timer):
    """With both timeout= and deadline=, the earlier one is the deadline."""
    assert CancelSource(timeout=3, deadline=clock() + 5, timer=timer).token.deadline == clock() + 3
    assert CancelSource(timeout=5, deadline=clock() + 3, timer=timer).token.deadline == clock() + 3


def test_deadline_already_past_is_born_cancelled(clock, timer):
    """A deadline in the past gives a token born cancelled with the deadline reason."""
    token = CancelSource(deadline=clock() - 1, timer=timer).token
    assert token.cancelled
    assert token.reason == DEADLINE_EXCEEDED


@pytest.mark.parametrize(
    ("deadline", "error", "message"),
    [
        ("soon", TypeError, "deadline must be a time.monotonic"),
        (True, TypeError, "deadline must be a time.monotonic"),
        (math.nan, ValueError, "deadline must be a time.monotonic.*nan"),
    ],
)
def test_bad_deadline_is_rejected_naming_it(deadline, error, message):
    """deadline= that is no number, or NaN, is refused with a message naming it."""
    with pytest.raises(error, match=message):
        CancelSource(deadline=deadline)
