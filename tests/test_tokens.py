"""Unit tests of `lifecycle._core.tokens`: sources, tokens, deadlines, scopes."""

from __future__ import annotations

import ast
import asyncio
import functools
import gc
import math
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import types
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
ROOT = Path(__file__).resolve().parent.parent  # the repository, where `tests` imports from


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
    assert expected == len(source.token._callbacks or ())


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

    object.__setattr__(parent.token, "_children", InterruptedSet())  # the token is read-only
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
    assert expected == (asyncio.run(source.token.wait_async(0)), len(source.token._callbacks or ()))


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
    assert expected == len(source.token._callbacks or ())


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
    assert expected == (asyncio.run(main()), len(source.token._callbacks or ()))


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


# -- read-only tokens, the never-cancelled token, deep trees ---------------------------


def test_cancelled_cannot_be_assigned():
    """Assigning or deleting `cancelled` raises AttributeError naming the way out; no change."""
    token = CancelSource().token
    with pytest.raises(AttributeError, match="read-only; cancel through its CancelSource"):
        token.cancelled = True
    with pytest.raises(AttributeError, match="read-only; cancel through its CancelSource"):
        del token.cancelled
    expected = (False, None)
    assert expected == (token.cancelled, token.reason)


def test_registrations_on_the_never_cancelled_token_are_not_stored():
    """Outside any component, on_cancel and wait_async's wake-up store nothing; detach says True."""
    token = current_token()
    detaches = [token.on_cancel(lambda: None) for _ in range(10_000)]
    detaches.append(_tokens.on_cancel_inline(token, lambda: None))

    async def main() -> bool:
        return await token.wait_async(0.001)

    timed_out = asyncio.run(main())
    expected = (0, {True}, False)
    assert expected == (len(token._callbacks or ()), {d() for d in detaches}, timed_out)


def test_registering_on_a_deep_token_leaves_its_ancestors_alone():
    """A registration 20 000 levels deep is held by its root alone: no other ancestor changes."""
    chain = [CancelSource()]
    for _ in range(20_000):
        chain.append(CancelSource(chain[-1].token))
    leaf = chain[-1].token
    touched_while_registered = []
    for _ in range(3):
        detach = leaf.on_cancel(lambda: None)
        touched_while_registered.append(sum(s.token._pinned is not None for s in chain))
        assert True is detach()
    expected = ([1, 1, 1], 0, {leaf})
    assert expected == (
        touched_while_registered,
        sum(s.token._pinned is not None for s in chain),
        set(chain[0].token._pinned or ()) | {leaf},
    )


DEEP = 100_000  # levels of the deep chain below, and children of the fan-out beside it


def chain_of(depth: int) -> tuple[CancelSource, list[CancelSource]]:
    """A root and a chain ``depth`` deep below it (each the child of the one before)."""
    root = CancelSource()
    chain = [root]
    for _ in range(depth):
        chain.append(CancelSource(chain[-1].token))
    return root, chain[1:]


def fan_out_of(width: int) -> tuple[CancelSource, list[CancelSource]]:
    """A root and ``width`` children of it."""
    root = CancelSource()
    return root, [CancelSource(root.token) for _ in range(width)]


def register_cancel_and_drop(shape: Callable[[int], tuple[CancelSource, list[CancelSource]]]):
    """Seconds to build ``shape(DEEP)``, register on each token, cancel the root, drop it all.

    The cyclic collector is off while it runs: what is timed is the tokens' own work.
    """
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        root, sources = shape(DEEP)
        ran: list[int] = []
        for source in sources:
            source.token.on_cancel(functools.partial(ran.append, 1))
        reasons = {sources[0].token.reason, sources[-1].token.reason}
        del sources[:-1]
        root.cancel("deep")
        reasons |= {sources[-1].token.reason}
        del root, sources
        return time.perf_counter() - start, len(ran), reasons
    finally:
        gc.enable()


@pytest.mark.realtime
def test_realtime_a_chain_100_000_deep_costs_what_a_fan_out_of_as_many_does():
    """Building, registering on, cancelling and dropping a 100 000-deep chain is linear."""
    flat_seconds, flat_ran, flat_reasons = register_cancel_and_drop(fan_out_of)
    deep_seconds, deep_ran, deep_reasons = register_cancel_and_drop(chain_of)
    # Linear work measures 0.6-1.9x the fan-out on a busy machine; work growing with
    # the depth of each token would be thousands of times the fan-out at this size.
    assert deep_seconds < 10 * flat_seconds, (deep_seconds, flat_seconds)
    expected = (DEEP, {None, "deep"})
    assert expected == (deep_ran, deep_reasons) == (flat_ran, flat_reasons)


def test_a_chain_100_000_deep_is_registered_closed_and_dropped_without_recursion():
    """A 100 000-deep chain registers at its leaf, closes from the leaf, and is freed from one."""
    root, chain = chain_of(DEEP)
    leaf = chain[-1]
    detach = leaf.token.on_cancel(int)  # its anchor, the root, is found by a walk up
    half = len(chain) // 2
    for source in reversed(chain[half:]):
        source.close()
    closed = (leaf.token.reason, chain[half - 1].token.cancelled, detach())
    ref = weakref.ref(chain[0].token)
    del chain[half:], leaf
    del chain[:-1]
    del chain  # its deepest live token was the last hold on the 50 000 above it
    expected = ("closed", False, False, None, 0)
    assert expected == (*closed, ref(), children_of(root.token))


# -- deadlines from different timers ----------------------------------------------------


def test_linking_deadlines_of_different_clocks_is_refused(clock):
    """Linking tokens whose deadlines are on timers of different clocks is refused."""
    fake = DeadlineTimer(clock, threaded=False)
    dated = CancelSource(timeout=5, timer=fake).token
    with pytest.raises(ValueError, match="different DeadlineTimers cannot be linked"):
        CancelSource.linked(dated, CancelSource(timeout=100).token)
    with pytest.raises(ValueError, match="different DeadlineTimers cannot be linked"):
        CancelSource.linked(CancelSource().token, dated, timeout=1, timer=DeadlineTimer())


def test_a_linked_token_keeps_time_on_the_timer_of_its_dated_input(clock):
    """A linked token whose one dated input is on a fake clock keeps its own timeout there too."""
    fake = DeadlineTimer(clock, threaded=False)
    dated = CancelSource(timeout=5, timer=fake).token
    linked = CancelSource.linked(CancelSource().token, dated, timeout=0.5).token
    before = (linked.deadline, linked.remaining())
    clock.advance(0.5)
    fake.fire_due()
    expected = ((clock() - 0.5 + 0.5, 0.5), DEADLINE_EXCEEDED)
    assert expected == (before, linked.reason)


def test_a_child_on_another_clock_under_a_dated_parent_is_refused(clock):
    """A child with its own timer (another clock) under a parent with a deadline is refused."""
    fake = DeadlineTimer(clock, threaded=False)
    parent = CancelSource(timeout=100).token
    with pytest.raises(ValueError, match="different DeadlineTimers cannot be linked"):
        CancelSource(parent, timeout=5, timer=fake)
    with pytest.raises(ValueError, match="different DeadlineTimers cannot be linked"):
        CancelSource(parent, timer=fake)  # it would read the parent's deadline on its own clock


def test_tokens_of_different_clocks_without_deadlines_mix_freely(clock):
    """Without deadlines (or with one clock) tokens of different timers link and cancel as usual."""
    fake = DeadlineTimer(clock, threaded=False)
    same_clock = DeadlineTimer(clock, threaded=False)
    plain_fake = CancelSource(timer=fake).token
    linked = CancelSource.linked(CancelSource().token, plain_fake)
    dated = CancelSource.linked(
        CancelSource(timeout=5, timer=fake).token, CancelSource(timeout=3, timer=same_clock).token
    )
    with_own = CancelSource(plain_fake, timeout=2)
    clock.advance(2)
    fake.fire_due()
    expected = (None, clock() + 1, DEADLINE_EXCEEDED, 0.0)
    assert expected == (
        linked.token.deadline,
        dated.token.deadline,
        with_own.token.reason,
        with_own.token.remaining(),
    )


def test_an_own_timeout_over_inputs_on_different_clocks_needs_a_timer(clock):
    """A linked own timeout over undated inputs on two clocks is refused unless timer= picks one."""
    fake = DeadlineTimer(clock, threaded=False)
    on_fake, on_real = CancelSource(timer=fake).token, CancelSource().token
    refused = []
    for inputs in ((on_fake, on_real), (on_real, on_fake)):
        with pytest.raises(ValueError, match="different clocks") as caught:
            CancelSource.linked(*inputs, timeout=5)
        refused.append(str(caught.value))
    chosen = CancelSource.linked(on_real, on_fake, timeout=5, timer=fake)
    clock.advance(5)
    fake.fire_due()
    assert all(repr(fake) in m and "clock" in m and "pass timer=" in m for m in refused), refused
    expected = (2, DEADLINE_EXCEEDED)
    assert expected == (len(refused), chosen.token.reason)


def test_a_child_of_inputs_on_different_clocks_needs_a_timer_for_its_timeout(clock):
    """A child's own timeout under a linked token of two clocks is refused unless timer= picks."""
    fake = DeadlineTimer(clock, threaded=False)
    mixed = CancelSource.linked(CancelSource(timer=fake).token, CancelSource().token).token
    with pytest.raises(ValueError, match="pass timer="):
        CancelSource(mixed, timeout=5)
    plain = CancelSource(mixed)  # no deadline: nothing to decide
    chosen = CancelSource(mixed, timeout=5, timer=fake)
    clock.advance(5)
    fake.fire_due()
    expected = (None, DEADLINE_EXCEEDED)
    assert expected == (plain.token.deadline, chosen.token.reason)


# -- huge timeouts ------------------------------------------------------------------


@pytest.mark.realtime
def test_realtime_a_huge_timeout_is_just_very_long(log_events):
    """timeout=1e10 on a real timer thread waits quietly; a nearer deadline still fires on time."""
    timer = DeadlineTimer()
    far = CancelSource(timeout=1e10, timer=timer)
    near = CancelSource(timeout=0.05, timer=timer)
    fired = near.token.wait(5.0)
    errors = [e for e in log_events if e["event"].startswith("deadline timer failed")]
    expected: tuple[bool, bool, list[object]] = (True, False, [])
    assert expected == (fired, far.token.cancelled, errors)


@pytest.mark.realtime
def test_realtime_infinite_and_huge_deadlines_on_a_timer_thread_wait_quietly(log_events):
    """inf, 1e10 and the largest float as timeout or deadline: no error, a near deadline fires."""
    timer = DeadlineTimer()
    far = [
        CancelSource(timeout=math.inf, timer=timer),
        CancelSource(deadline=math.inf, timer=timer),
        CancelSource(timeout=1e10, timer=timer),
        CancelSource(timeout=sys.float_info.max, timer=timer),
        CancelSource(deadline=sys.float_info.max, timer=timer),
    ]
    near = CancelSource(timeout=0.05, timer=timer)

    async def wait_async_long() -> bool:
        return await near.token.wait_async(1e10)

    fired = (near.token.wait(5.0), asyncio.run(wait_async_long()))
    errors = [e["event"] for e in log_events if e["event"].startswith("deadline timer")]
    expected: tuple[object, ...] = ((True, True), [False] * 5, [], 3)
    assert expected == (fired, [f.token.cancelled for f in far], errors, timer.pending())


@pytest.mark.realtime
@pytest.mark.parametrize("timeout", [1e10, math.inf], ids=["1e10", "inf"])
def test_realtime_wait_with_a_huge_timeout_blocks_until_cancelled(timeout):
    """token.wait() with a timeout beyond what the OS can wait for blocks until the cancel."""
    source = CancelSource(timeout=0.05)
    expected = (True, DEADLINE_EXCEEDED)
    assert expected == (source.token.wait(timeout), source.token.reason)


# -- fork ---------------------------------------------------------------------------


def in_forked_child(check: Callable[[], bool], meanwhile: Callable[[], object] = int) -> bytes:
    """Fork; run ``check`` in the child, ``meanwhile`` in the parent; the child's answer.

    b"ok" or b"no" as ``check`` returned, b"hung" if no answer came within the bound
    (the child is then killed). The child never returns into pytest.
    """
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # the child: report through the pipe
        try:
            os.write(write_end, b"ok" if check() else b"no")
        finally:
            os._exit(0)
    meanwhile()
    os.close(write_end)
    answer = b"hung"
    try:
        ready, _, _ = select.select([read_end], [], [], JOIN)
        answer = os.read(read_end, 2) if ready else b"hung"
    finally:
        os.close(read_end)
        if answer == b"hung":
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return answer


@pytest.mark.process
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_a_users_own_threaded_timer():
    """A deadline pending on a user's own threaded timer across fork fires in the child."""
    timer = DeadlineTimer()
    source = CancelSource(timeout=0.2, timer=timer)
    CancelSource(timeout=0.001, timer=timer).token.wait(JOIN)  # the timer thread runs

    def fires_in_child() -> bool:
        return source.token.wait(5.0) and source.token.reason == DEADLINE_EXCEEDED

    expected = b"ok"
    assert expected == in_forked_child(fires_in_child)


@pytest.mark.process
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_every_users_threaded_timer_and_a_new_one():
    """Deadlines on two of a user's threaded timers fire in a forked child; so do new ones."""
    timers = [DeadlineTimer(), DeadlineTimer()]
    sources = [CancelSource(timeout=0.2, timer=t) for t in timers]
    for timer in timers:
        CancelSource(timeout=0.001, timer=timer).token.wait(JOIN)  # each timer thread runs

    def fire_in_child() -> bool:
        fresh = CancelSource(timeout=0.05, timer=timers[0])
        return all(s.token.wait(5.0) for s in [*sources, fresh])

    expected = b"ok"
    assert expected == in_forked_child(fire_in_child)


def test_the_timers_known_for_fork_are_held_weakly():
    """The at-fork registry of timers does not keep a dropped timer alive."""
    timer = DeadlineTimer(threaded=False)
    CancelSource(timeout=5, timer=timer).cancel()
    ref = weakref.ref(timer)
    del timer
    gc.collect()
    expected = None
    assert expected is ref()


# -- re-entrant entries: signal handlers and Ctrl-C ------------------------------------
#
# A signal handler runs between two bytecodes of whatever the main thread does, the
# middle of a cancellation included; so does the KeyboardInterrupt of a Ctrl-C. The
# hooks below land such an entry at a chosen point: in the walk over a token's
# children, as a child links in, or as a callback starts.


def current_children(token: CancelToken) -> list[CancelToken]:
    return [] if token._children is None else list(token._children)


class HookedChildren(weakref.WeakSet):  # type: ignore[type-arg]
    """A child set that runs ``hook`` (``times`` times at most): each time a walk over it has
    yielded its first child (``on="iter"``), or after each add (``on="add"``)."""

    def __init__(
        self, items: list[CancelToken], hook: Callable[[], object], on: str, times: int
    ) -> None:
        self.hook = hook
        self.on = ""  # the items below are no adds to hook
        self.left = times
        super().__init__(items)
        self.on = on

    def fire(self) -> None:
        if self.left > 0:
            self.left -= 1
            self.hook()

    def __iter__(self) -> Iterator[CancelToken]:
        for i, item in enumerate(super().__iter__()):
            yield item
            if i == 0 and self.on == "iter":
                self.fire()

    def add(self, item: CancelToken) -> None:
        super().add(item)
        if self.on == "add":
            self.fire()


def hook_children(
    token: CancelToken, hook: Callable[[], object], on: str = "iter", times: int = 1
) -> None:
    """Make ``hook`` land inside the next walk over (or add to) ``token``'s children."""
    hooked = HookedChildren(current_children(token), hook, on, times)
    object.__setattr__(token, "_children", hooked)  # the token itself is read-only


def ctrl_c() -> None:
    raise KeyboardInterrupt


@contextmanager
def interrupted_at_entry(target: Callable[..., object]) -> Iterator[None]:
    """Raise KeyboardInterrupt once, as ``target`` starts, before its first line runs.

    Where a Ctrl-C lands when the interpreter checks for signals on entering a
    function; a trace function raising on the "call" event does exactly that.
    """
    code = getattr(target, "__code__", None)
    armed = [True]

    def tracer(frame: types.FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code is code and armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous)


def test_cancel_landing_inside_a_traversal_finishes_the_tree():
    """A handler's cancel() of a child landing in the walk over the children: all are cancelled."""
    root = CancelSource()
    kids = [CancelSource(root.token) for _ in range(5)]
    hook_children(root.token, lambda: kids[3].cancel("signal"))
    root.cancel("main")  # the walk began first: its reason wins everywhere
    expected = ["main"] * 5
    assert expected == [k.token.reason for k in kids]


def test_cancel_landing_as_a_child_links_in_cancels_the_child():
    """A handler's cancel() of the parent landing as a child links in: the child is cancelled."""
    root = CancelSource()
    hook_children(root.token, lambda: root.cancel("signal"), on="add")
    child = CancelSource(root.token)
    expected = (True, "signal")
    assert expected == (child.token.cancelled, child.token.reason)


def test_children_made_inside_a_traversal_come_out_cancelled():
    """Children a handler makes under a tree being cancelled come out cancelled, with its reason."""
    root = CancelSource()
    kids = [CancelSource(root.token) for _ in range(3)]
    made: list[CancelSource] = []

    def make() -> None:
        made.append(CancelSource(root.token))
        made.append(CancelSource(kids[0].token))
        made.append(CancelSource.linked(kids[1].token, CancelSource().token))

    hook_children(root.token, make)
    root.cancel("main")
    expected = ["main"] * 3
    assert expected == [m.token.reason for m in made]


def cancel_with(background: bool, source: CancelSource, reason: str) -> None:
    if background:
        _tokens.cancel_in_background(source, reason)
    else:
        source.cancel(reason)


def tree_with_callbacks(n: int) -> tuple[CancelSource, list[CancelSource], list[int]]:
    """A root with ``n`` children; child ``i``'s callback appends ``i`` to the list."""
    root = CancelSource()
    kids = [CancelSource(root.token) for _ in range(n)]
    calls: list[int] = []
    for i, kid in enumerate(kids):
        kid.token.on_cancel(functools.partial(calls.append, i))
    return root, kids, calls


BACKGROUND = pytest.mark.parametrize("background", [False, True], ids=["cancel", "background"])


@BACKGROUND
def test_ctrl_c_inside_a_traversal_finishes_it_then_propagates(background):
    """Ctrl-C landing in the walk over the children: the tree is finished, then it propagates."""
    root, kids, calls = tree_with_callbacks(5)
    hook_children(root.token, ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        cancel_with(background, root, "shutdown")
    idle = _tokens.wait_callbacks_idle(JOIN)
    expected = (["shutdown"] * 5, [0, 1, 2, 3, 4], True)
    assert expected == ([k.token.reason for k in kids], sorted(calls), idle)


@BACKGROUND
def test_a_retried_cancel_finishes_what_ctrl_c_broke_off(background):
    """Ctrl-C landing again and again in one cancel: the next cancel() finishes it, once each."""
    root, kids, calls = tree_with_callbacks(5)
    hook_children(root.token, ctrl_c, times=5)
    with pytest.raises(KeyboardInterrupt):
        cancel_with(background, root, "shutdown")
    for _ in range(5):  # a caller that keeps retrying while its Ctrl-Cs land
        try:
            root.cancel("again")
            break
        except KeyboardInterrupt:
            pass
    idle = _tokens.wait_callbacks_idle(JOIN)
    expected = (["shutdown"] * 5, [0, 1, 2, 3, 4], True)
    assert expected == ([k.token.reason for k in kids], sorted(calls), idle)


@pytest.mark.parametrize("inline", [False, True], ids=["callback", "wake-up"])
def test_ctrl_c_as_a_callback_starts_still_runs_it_once(inline, log_events):
    """Ctrl-C landing as a callback or wake-up starts, before its first line: it runs, once."""
    source = CancelSource()
    calls: list[int] = []

    def second() -> None:
        calls.append(2)

    register = (
        functools.partial(_tokens.on_cancel_inline, source.token)
        if inline
        else source.token.on_cancel
    )
    register(functools.partial(calls.append, 1))
    register(second)
    register(functools.partial(calls.append, 3))
    with interrupted_at_entry(second), pytest.raises(KeyboardInterrupt):
        source.cancel("shutdown")
    expected: tuple[list[int], list[str]] = ([1, 2, 3], [])
    assert expected == (calls, [e["event"] for e in log_events])


class TreeFuzz:
    """Random operations on one token tree, from the main thread and from a signal handler.

    Each operation creates a child (or a linked child, or 50 at once), registers a
    callback (and detaches it half the time), cancels or closes a node. Every
    registration records its calls and what its detach said.
    """

    def __init__(self, timer: DeadlineTimer, seed: int) -> None:
        self.timer = timer
        self.main_rng = random.Random(seed)
        self.handler_rng = random.Random(seed + 1)
        self.nodes: list[CancelSource] = []
        self.registrations: list[tuple[list[int], list[bool]]] = []
        self.errors: list[str] = []
        self.armed = False

    def op(self, rng: random.Random) -> None:
        nodes = self.nodes
        node = rng.choice(nodes)
        x = rng.random()
        if x < 0.2:
            nodes.append(CancelSource(node.token, timeout=rng.choice([None, 30.0])))
        elif x < 0.3:
            nodes.append(CancelSource.linked(node.token, rng.choice(nodes).token))
        elif x < 0.35:
            nodes.extend(CancelSource(node.token) for _ in range(50))
        elif x < 0.75:
            calls: list[int] = []
            detached: list[bool] = []
            self.registrations.append((calls, detached))
            detach = node.token.on_cancel(functools.partial(calls.append, 1))
            if rng.random() < 0.5:
                detached.append(detach())
        elif x < 0.9:
            node.cancel("op")
        else:
            node.close()

    def handler(self, signum: int, frame: object) -> None:
        if self.armed:
            try:
                self.op(self.handler_rng)
            except Exception as exc:  # recorded: the test fails on any
                self.errors.append(f"in the handler: {exc!r}")

    def round(self, steps: int) -> list[str]:
        """One tree: ``steps`` main-thread operations under fire; what is broken after."""
        root = CancelSource(timer=self.timer)
        self.nodes = [root]
        self.registrations = []
        self.armed = True
        try:
            for _ in range(steps):
                try:
                    self.op(self.main_rng)
                except Exception as exc:  # recorded: the test fails on any
                    self.errors.append(f"in the main thread: {exc!r}")
        finally:
            self.armed = False
        root.cancel("end")
        broken = list(self.errors)
        tokens = [n.token for n in self.nodes]
        if any(not t.cancelled for t in tokens):
            broken.append(
                f"{sum(not t.cancelled for t in tokens)} tokens live under a cancelled root"
            )
        if any(p.cancelled for t in tokens for p in (t._pinned or ())):
            broken.append("a cancelled token is still held by a registration pin")
        if any(t.cancelled for t in self.timer._keep):
            broken.append("the timer still keeps a cancelled token")
        wrong = [
            (len(calls), detached)
            for calls, detached in self.registrations
            if len(calls) != (0 if detached == [True] else 1)
        ]
        if wrong:
            broken.append(f"registrations that did not run once iff not detached: {wrong[:5]}")
        return broken


def fuzz_signal_handler_ops(seconds: float) -> list[tuple[int, list[str]]]:
    """Rounds of `TreeFuzz` under a signal handler that fires every 200 µs; the broken ones."""
    fuzz = TreeFuzz(DeadlineTimer(FakeClock(), threaded=False), seed=11)
    failures: list[tuple[int, list[str]]] = []
    signal.signal(signal.SIGALRM, fuzz.handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
    try:
        until = time.monotonic() + seconds
        rounds = 0
        while time.monotonic() < until and not failures:
            rounds += 1
            broken = fuzz.round(steps=300)
            if broken:
                failures.append((rounds, broken))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return failures


def fuzz_ctrl_c(seconds: float) -> list[tuple[int, int, int, bool]]:
    """Cancels of 100-child trees, each hit by a Ctrl-C at a random point; the broken rounds.

    A round is broken when, after the caller's retry, a child is still live, the
    callbacks did not run exactly once each, or the callback threads are not idle.
    """
    armed = [False]

    def ctrl_c_once(signum: int, frame: object) -> None:
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    rng = random.Random(2024)
    failures: list[tuple[int, int, int, bool]] = []
    signal.signal(signal.SIGALRM, ctrl_c_once)
    until = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < until and not failures:
        rounds += 1
        root = CancelSource()
        kids = [CancelSource(root.token) for _ in range(100)]
        calls: list[int] = []
        for kid in kids:
            kid.token.on_cancel(lambda: calls.append(1))  # noqa: B023 - this round's list
        try:
            armed[0] = True
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, 3e-4))
            cancel_with(rounds % 2 == 0, root, "shutdown")
            spin_until = time.monotonic() + 0.05  # a cancel faster than the timer: it lands here
            while armed[0] and time.monotonic() < spin_until:
                pass
        except KeyboardInterrupt:
            pass
        finally:
            armed[0] = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        root.cancel("again")  # the caller's retry
        idle = _tokens.wait_callbacks_idle(JOIN)
        live = sum(not k.token.cancelled for k in kids)
        if live or len(calls) != len(kids) or not idle:
            failures.append((rounds, live, len(calls), idle))
    return failures


FUZZES: dict[str, Callable[[float], list[Any]]] = {
    "handler-ops": fuzz_signal_handler_ops,
    "ctrl-c": fuzz_ctrl_c,
}


def run_fuzz_in_child(name: str, seconds: float) -> object:
    """Run ``FUZZES[name]`` in a child process (it owns SIGALRM there); what it returned."""
    code = f"from tests.test_tokens import FUZZES; print(repr(FUZZES[{name!r}]({seconds!r})))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds + 40,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


@pytest.mark.process
@pytest.mark.realtime
@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
def test_realtime_token_operations_from_a_signal_handler_keep_the_tree_whole():
    """Token operations from a signal handler every 200 µs, landing anywhere in the main
    thread's cancels, creations, registrations and detaches, keep every invariant of the
    tree after each round (3 s of rounds, in a child process)."""
    expected: list[object] = []
    assert expected == run_fuzz_in_child("handler-ops", 3.0)


@pytest.mark.process
@pytest.mark.realtime
@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer")
def test_realtime_ctrl_c_at_random_points_of_cancels_loses_nothing():
    """Ctrl-C from a real signal at a random point of each cancel: every tree ends whole, each
    callback ran once, the callback threads end idle (2 s of rounds, in a child process)."""
    expected: list[object] = []
    assert expected == run_fuzz_in_child("ctrl-c", 2.0)


def test_a_token_of_a_subclass_made_current_is_what_current_token_returns():
    """current_token() tells a request's record from a token by the record's types: a
    token of a CancelToken subclass made current is returned as it is."""

    class Own(CancelToken):
        __slots__ = ()

    token = Own._make((), None, None)
    with use_token(token):
        assert current_token() is token
