"""Behaviour of `MemoryDedupe` (claims, leases, the bounded store) and of a consumer using it."""

from __future__ import annotations

import collections
import queue
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle import CancelSource, DeadlineExceeded
from lifecycle._workers.consumer import Consumer, Message, QueueSource
from lifecycle._workers.dedupe import Claim, Dedupe, MemoryDedupe, as_claim
from tests.fakes import FakeClock

BOUND = 10.0


def msg(key: str, deliveries: int = 1) -> Message:
    return Message(key, {"key": key}, deliveries)


def test_a_first_delivery_is_claimed_a_second_is_refused() -> None:
    """claim: True once; False while the claim lives, and once done."""
    seen = MemoryDedupe()
    assert seen.claim(msg("a"))
    assert not seen.claim(msg("a", 2))
    seen.done(msg("a"))
    assert not seen.claim(msg("a", 3))
    assert len(seen) == 1
    assert seen.claims == 0


def test_release_lets_the_redelivery_handle_it() -> None:
    """A released claim (the handler failed) no longer blocks a redelivery."""
    seen = MemoryDedupe()
    assert seen.claim(msg("a"))
    seen.release(msg("a"))
    assert seen.claim(msg("a", 2))
    seen.release(msg("never claimed"))  # a no-op


def test_a_lease_runs_out_on_the_clock(clock: FakeClock) -> None:
    """A claim whose holder vanished blocks redeliveries only until its lease ends."""
    seen = MemoryDedupe(lease=30.0, clock=clock)
    assert seen.claim(msg("a"))
    clock.advance(29.999)
    assert not seen.claim(msg("a", 2))
    clock.advance(0.001)
    assert seen.claim(msg("a", 3))  # expired: the next claim wins, with a fresh lease
    clock.advance(29.0)
    assert not seen.claim(msg("a", 4))


def test_a_done_id_outlives_any_lease(clock: FakeClock) -> None:
    """Done is remembered regardless of time (only capacity forgets it)."""
    seen = MemoryDedupe(lease=1.0, clock=clock)
    seen.claim(msg("a"))
    seen.done(msg("a"))
    clock.advance(1e6)
    assert not seen.claim(msg("a", 2))


def test_expired_claims_are_swept(clock: FakeClock) -> None:
    """Claims never released do not pile up: a new claim sweeps the expired ones."""
    seen = MemoryDedupe(lease=1.0, clock=clock)
    for i in range(100):
        seen.claim(msg(str(i)))
    clock.advance(1.0)
    seen.claim(msg("new"))
    assert seen.claims == 1


def test_capacity_is_exact_and_least_recently_seen_goes_first() -> None:
    """capacity ids are kept, not one more; a claim hit refreshes an id."""
    seen = MemoryDedupe(capacity=3)
    for key in "abc":
        seen.claim(msg(key))
        seen.done(msg(key))
    assert not seen.claim(msg("a"))  # refreshes "a": "b" is now the oldest
    seen.claim(msg("d"))
    seen.done(msg("d"))
    assert len(seen) == 3
    assert seen.claim(msg("b"))  # forgotten: handled again
    assert not seen.claim(msg("a"))
    assert not seen.claim(msg("c"))
    assert not seen.claim(msg("d"))


class Model:
    """What MemoryDedupe promises, written plainly: an LRU of done ids and a dict of leases."""

    def __init__(self, capacity: int, lease: float) -> None:
        self.capacity, self.lease = capacity, lease
        self.done: collections.OrderedDict[str, None] = collections.OrderedDict()
        self.claims: collections.OrderedDict[str, float] = collections.OrderedDict()

    def claim(self, key: str, now: float) -> bool:
        if key in self.done:
            self.done.move_to_end(key)
            return False
        if key in self.claims and now < self.claims[key]:
            return False
        self.claims[key] = now + self.lease
        self.claims.move_to_end(key)
        return True

    def finish(self, key: str) -> None:
        self.claims.pop(key, None)
        self.done[key] = None
        self.done.move_to_end(key)
        while len(self.done) > self.capacity:
            self.done.popitem(last=False)

    def release(self, key: str) -> None:
        self.claims.pop(key, None)


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 5),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["claim", "done", "release", "tick"]),
            st.sampled_from("abcdefgh"),
        ),
        max_size=60,
    ),
)
def test_memory_dedupe_matches_its_model(capacity: int, ops: list[tuple[str, str]]) -> None:
    """Any sequence of calls: the same answers as the model, and never more than capacity ids.

    Beyond capacity live claims, the oldest claim is dropped (as if released): the
    model mirrors that, so the answers to later claims check it too.
    """
    clock = FakeClock()
    lease = 2.0
    real = MemoryDedupe(capacity, lease=lease, clock=clock)
    model = Model(capacity, lease)
    for op, key in ops:
        if op == "claim":
            expected = model.claim(key, clock())
            got = real.claim(msg(key))
            if got and not expected:
                pytest.fail(f"claimed {key} twice")
            if expected and not got:
                pytest.fail(f"refused {key}, which the model claims")
            # The real store drops its oldest live claims beyond capacity.
            live = [k for k, exp in model.claims.items() if exp > clock()]
            for old in live[: max(len(live) - capacity, 0)]:
                model.claims.pop(old)
        elif op == "done":
            model.finish(key)
            real.done(msg(key))
        elif op == "release":
            model.release(key)
            real.release(msg(key))
        else:
            clock.advance(1.0)
        assert len(real) == len(model.done) <= capacity
        assert real.claims <= capacity


def test_it_is_a_dedupe() -> None:
    """MemoryDedupe satisfies the Dedupe protocol."""
    assert isinstance(MemoryDedupe(), Dedupe)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"capacity": 0}, "capacity must be an int >= 1"),
        ({"lease": 0}, "lease must be a positive number"),
        ({"lease": float("nan")}, "lease must be a positive number"),
    ],
)
def test_bad_bounds_are_refused(kwargs: dict[str, Any], message: str) -> None:
    """A capacity below 1 or a lease that is not positive is a ValueError."""
    with pytest.raises(ValueError, match=message):
        MemoryDedupe(**kwargs)


# -- with a consumer ----------------------------------------------------------------------


def run_consumer(q: queue.Queue[Any], handler: Any, dedupe: MemoryDedupe) -> Consumer:
    """Run a consumer over ``q`` until it is drained (``join``), then stop it."""
    consumer = Consumer(QueueSource(q), handler, dedupe=dedupe, concurrency=2)
    run = CancelSource()
    thread = threading.Thread(target=consumer.run, args=(run.token,), daemon=True)
    thread.start()
    drained = threading.Thread(target=q.join, daemon=True)
    drained.start()
    drained.join(BOUND)
    assert not drained.is_alive(), "the queue was not drained"
    run.cancel("done")
    thread.join(BOUND)
    consumer.stop(CancelSource(timeout=5).token)
    return consumer


def test_a_consumer_skips_duplicates_and_acks_them() -> None:
    """The same id delivered three times: one effect, three acks, two duplicates counted."""
    q: queue.Queue[Any] = queue.Queue()
    for deliveries in (1, 2, 3):
        q.put(msg("order-7", deliveries))
    q.put(msg("order-8"))
    effects: list[str] = []
    consumer = run_consumer(q, lambda m: effects.append(m.id), MemoryDedupe())
    assert sorted(effects) == ["order-7", "order-8"]
    stats = consumer.stats()
    assert (stats.handled, stats.duplicates, stats.acked) == (2, 2, 4)


def test_a_failed_handler_releases_its_claim_so_the_redelivery_runs() -> None:
    """A handler that fails once: released, given back, handled on its second delivery."""
    q: queue.Queue[Any] = queue.Queue()
    q.put(msg("a"))
    calls: list[int] = []

    def handle(m: Message) -> None:
        calls.append(m.deliveries)
        if m.deliveries == 1:
            raise RuntimeError("first try fails")

    dedupe = MemoryDedupe()
    consumer = run_consumer(q, handle, dedupe)
    assert calls == [1, 2]
    assert consumer.stats().duplicates == 0
    assert consumer.stats().failed == 1
    assert len(dedupe) == 1
    assert dedupe.claims == 0


def test_a_cut_message_is_released() -> None:
    """A message cut at the stop deadline: its claim released, so a redelivery handles it."""
    q: queue.Queue[Any] = queue.Queue()
    q.put(msg("slow"))
    started, gate = threading.Event(), threading.Event()

    def handle(m: Message) -> None:
        started.set()
        gate.wait(BOUND)
        raise RuntimeError("ends after the cut, without its effect")

    dedupe = MemoryDedupe()
    consumer = Consumer(QueueSource(q), handle, dedupe=dedupe)
    run = CancelSource()
    thread = threading.Thread(target=consumer.run, args=(run.token,), daemon=True)
    thread.start()
    assert started.wait(BOUND)
    run.cancel("stop")
    thread.join(BOUND)
    with pytest.raises(DeadlineExceeded):
        consumer.stop(CancelSource(timeout=0.3).token)
    assert dedupe.claims == 0
    assert len(dedupe) == 0
    assert dedupe.claim(msg("slow", 2))
    gate.set()


def test_claim_has_three_answers_and_only_handle_is_true(clock: FakeClock) -> None:
    """HANDLE for a free id, BUSY under a live lease, DONE once done; bool() is HANDLE only."""
    seen = MemoryDedupe(lease=10, clock=clock)
    assert seen.claim(msg("a")) is Claim.HANDLE
    assert seen.claim(msg("a", 2)) is Claim.BUSY
    clock.advance(10)
    assert seen.claim(msg("a", 3)) is Claim.HANDLE  # the lease ran out
    seen.done(msg("a"))
    assert seen.claim(msg("a", 4)) is Claim.DONE
    assert [bool(c) for c in Claim] == [True, False, False]


def test_a_claim_answer_of_another_type_is_refused_with_the_fix() -> None:
    """as_claim maps bools (True: HANDLE, False: DONE) and names the fix for anything else."""
    assert (as_claim(True), as_claim(False)) == (Claim.HANDLE, Claim.DONE)
    with pytest.raises(TypeError, match=r"Claim\.HANDLE, Claim\.DONE or Claim\.BUSY"):
        as_claim(None)


def test_duplicates_while_the_first_runs_keep_the_queue_balanced() -> None:
    """Deliveries of one id while its handler runs follow it: the queue still drains (join)."""
    q: queue.Queue[Any] = queue.Queue()
    gate, started = threading.Event(), threading.Event()
    effects: list[str] = []

    def handle(m: Message) -> None:
        started.set()
        assert gate.wait(BOUND)
        effects.append(m.id)

    consumer = Consumer(QueueSource(q), handle, dedupe=MemoryDedupe(), concurrency=3)
    run = CancelSource()
    thread = threading.Thread(target=consumer.run, args=(run.token,), daemon=True)
    thread.start()
    q.put(msg("order-7"))
    assert started.wait(BOUND)
    q.put(msg("order-7", 2))
    q.put(msg("order-7", 3))
    deadline = time.monotonic() + BOUND
    while consumer.stats().busy < 2:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    gate.set()
    drained = threading.Thread(target=q.join, daemon=True)
    drained.start()
    drained.join(BOUND)
    assert not drained.is_alive(), "the queue was not drained"
    run.cancel("done")
    thread.join(BOUND)
    consumer.stop(CancelSource(timeout=5).token)
    assert effects == ["order-7"]
    stats = consumer.stats()
    assert (stats.handled, stats.busy, stats.duplicates, stats.acked) == (1, 2, 0, 3)
